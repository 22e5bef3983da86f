"""PairRM checkpoints: reading either published layout, and writing both.

``model`` is a local directory or a hub id (:func:`sppo_nemo.formats.hub.local_dir`), in either published
layout, with the same parameter names (``pretrained_model.*`` for the DeBERTa-v2 encoder,
``head_layer.{1,4}.*``):

- ``llm-blender/PairRM-hf``: a DeBERTa-v2 ``config.json`` with PairRM's extra keys (``n_tasks``,
  ``drop_out``, ``source_prefix_id``, ``cand1_prefix_id``, ``cand2_prefix_id``, ...), the weights
  (safetensors or ``pytorch_model.bin``, sharded or not) and the tokenizer files.
- ``llm-blender/PairRM`` (the original): llm-blender's ``RankerConfig`` as ``config.json``
  (``ranker_type: pairranker``, ``model_name: microsoft/deberta-v3-large``, budgets) and the
  ranker's ``pytorch_model.bin``; the encoder's config and tokenizer come from ``model_name`` (or
  the ``backbone`` argument: a directory or hub id), and the four prefix tokens are added to that
  tokenizer in llm-blender's order, as its collator does.

Reading is split in two: :func:`read_checkpoint` (configs and tokenizer, what a judge needs to
build inputs) and :func:`load_weights` (the network, on the CPU in fp32), so that a judge that
spreads its work over device workers reads the weights only in the workers. Every problem with
the files is a :class:`~.errors.PairRMError` naming the file and the fix.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sppo_nemo.backends.pairrm.errors import PairRMError
from sppo_nemo.backends.pairrm.inputs import CANDIDATE_MAX_LENGTH, SOURCE_MAX_LENGTH
from sppo_nemo.backends.pairrm.model import pairrm_model_class
from sppo_nemo.backends.pairrm.tokenizer import PairRMTokens, load_pairrm_tokenizer, read_json
from sppo_nemo.formats.hub import local_dir

IGNORED_KEYS = ("position_ids",)  # buffers some checkpoints carry; never parameters
DEFAULT_BACKBONE = "microsoft/deberta-v3-large"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spm.model")
_REDOWNLOAD = "download the checkpoint again (huggingface-cli download) or point judge.model at a good copy"


@dataclass
class PairRMCheckpoint:
    """What a checkpoint directory says before its weights are read."""

    path: Path
    layout: str  # "hf" or "original"
    backbone: Path | None  # the encoder's directory (original layout)
    config: Any  # transformers DebertaV2Config of the encoder
    tokens: PairRMTokens
    n_tasks: int
    drop_out: float
    source_max_length: int
    candidate_max_length: int


def _deberta_config(directory: Path, key: str):
    from transformers import DebertaV2Config

    try:
        config = DebertaV2Config.from_pretrained(str(directory))
    except Exception as exc:  # a missing or corrupt config.json, an unknown model type
        raise PairRMError(f"{directory}: no readable DeBERTa-v2 config.json ({type(exc).__name__}); "
                          f"point {key} at a DeBERTa-v2/v3 checkpoint directory") from None
    if config.model_type != "deberta-v2":
        raise PairRMError(f"{directory}: model_type {config.model_type!r}; PairRM needs a DeBERTa-v2/v3 encoder: "
                          f"point {key} at one")
    return config


def read_checkpoint(model: str | Path, backbone: str | Path | None = None) -> PairRMCheckpoint:
    """Configs and tokenizer of a PairRM checkpoint in either layout (see the module docstring)."""
    path = local_dir(model, "PairRM checkpoint", "judge.model")
    config = read_json(path / "config.json")
    if not config:
        raise PairRMError(f"{path}: no config.json; not a PairRM checkpoint: {_REDOWNLOAD}")
    n_tasks, drop_out = int(config.get("n_tasks", 1)), float(config.get("drop_out", 0.05))
    if config.get("ranker_type") is not None:  # the original llm-blender/PairRM layout
        if config["ranker_type"] != "pairranker":
            raise PairRMError(f"{path}: ranker_type={config['ranker_type']!r}; only PairRM (pairranker) is "
                              "supported: point judge.model at a PairRM checkpoint")
        base = local_dir(backbone or config.get("model_name") or DEFAULT_BACKBONE, "PairRM backbone",
                         "judge.backbone")
        return PairRMCheckpoint(path, "original", base, _deberta_config(base, "judge.backbone"),
                                load_pairrm_tokenizer(base), n_tasks, drop_out,
                                int(config.get("source_maxlength") or SOURCE_MAX_LENGTH),
                                int(config.get("candidate_maxlength") or CANDIDATE_MAX_LENGTH))
    if config.get("model_type") != "deberta-v2":
        raise PairRMError(f"{path}: config.json is neither llm-blender's RankerConfig nor a DeBERTa-v2 PairRM "
                          f"config (model_type={config.get('model_type')!r}): point judge.model at a PairRM checkpoint")
    tokens = load_pairrm_tokenizer(path)
    for key, got in (("source_prefix_id", tokens.source_id), ("cand1_prefix_id", tokens.cand1_id),
                     ("cand2_prefix_id", tokens.cand2_id)):
        if key in config and config[key] != got:
            raise PairRMError(f"{path}: config.json says {key}={config[key]} but the tokenizer gives {got}; "
                              f"config and tokenizer do not belong together: {_REDOWNLOAD}")
    return PairRMCheckpoint(path, "hf", None, _deberta_config(path, "judge.model"), tokens, n_tasks, drop_out,
                            SOURCE_MAX_LENGTH, CANDIDATE_MAX_LENGTH)


def _load_file(p: Path) -> dict:
    import torch

    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        return torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PairRMError(f"{p}: a weight file the index names is missing: {_REDOWNLOAD}") from None
    except Exception as exc:  # truncated or corrupt: safetensors, pickle and zip errors
        raise PairRMError(f"{p}: unreadable weights ({type(exc).__name__}: {exc}): {_REDOWNLOAD}") from None


def state_dict(directory: Path) -> dict:
    """The parameters of a checkpoint directory: safetensors or pytorch_model.bin, sharded or not."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = read_json(directory / index_name)
        if index:
            sd: dict = {}
            for f in sorted(set(index.get("weight_map", {}).values())):
                sd.update(_load_file(directory / f))
            return sd
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return _load_file(directory / name)
    raise PairRMError(f"{directory}: no model.safetensors or pytorch_model.bin (sharded or not): {_REDOWNLOAD}")


def load_weights(ckpt: PairRMCheckpoint):
    """The PairRMModel of a checkpoint, on the CPU in fp32, in eval mode; names and shapes checked."""
    sd = {k: v for k, v in state_dict(ckpt.path).items() if not k.endswith(IGNORED_KEYS)}
    emb = sd.get("pretrained_model.embeddings.word_embeddings.weight")
    if emb is None:
        raise PairRMError(f"{ckpt.path}: no pretrained_model.embeddings.word_embeddings.weight; not a PairRM "
                          f"checkpoint: {_REDOWNLOAD}")
    config = copy.deepcopy(ckpt.config)
    config.vocab_size = int(emb.shape[0])
    if ckpt.tokens.vocab_size > config.vocab_size:
        raise PairRMError(f"{ckpt.path}: the tokenizer has {ckpt.tokens.vocab_size} tokens (with the prefix tokens) "
                          f"but the embedding has {config.vocab_size} rows; tokenizer and weights do not belong "
                          f"together: {_REDOWNLOAD}")
    net = pairrm_model_class()(config, n_tasks=ckpt.n_tasks, drop_out=ckpt.drop_out)
    own = net.state_dict()
    missing = sorted(k for k in own if k not in sd and not k.endswith(IGNORED_KEYS))
    unexpected = sorted(k for k in sd if k not in own)
    if missing or unexpected:
        raise PairRMError(f"{ckpt.path}: parameter names do not match PairRM's: missing {missing[:8]}"
                          f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                          f"{'...' if len(unexpected) > 8 else ''}: {_REDOWNLOAD}")
    try:
        net.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise PairRMError(f"{ckpt.path}: weights do not fit the config ({str(exc).splitlines()[-1].strip()}): "
                          f"{_REDOWNLOAD}") from None
    return net.eval()


def save_pairrm(model, tokens_dir: str | Path, out: str | Path, layout: str = "hf",
                backbone_dir: str | Path | None = None) -> Path:
    """Write ``model`` (a PairRMModel) as a checkpoint in the ``hf`` layout (DeBERTa-v2 config with
    PairRM's keys, model.safetensors, the tokenizer files of ``tokens_dir``), or the ``original``
    layout (RankerConfig config.json and pytorch_model.bin; the encoder config and tokenizer, without
    prefix tokens, go to ``backbone_dir``, named in the RankerConfig as ``model_name``)."""
    import torch
    from safetensors.torch import save_file

    if layout not in ("hf", "original"):
        raise ValueError(f"layout={layout!r}; use 'hf' or 'original'")
    if layout == "original" and backbone_dir is None:
        raise ValueError("the original layout needs backbone_dir (encoder config and tokenizer)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokens = load_pairrm_tokenizer(tokens_dir)
    sd = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()
          if not k.endswith(IGNORED_KEYS)}
    cfg = model.config.to_dict()
    n_tasks = model.head_layer[4].out_features
    drop_out = float(model.head_layer[0].p)
    if layout == "hf":
        cfg.update(architectures=["DebertaV2PairRM"], n_tasks=n_tasks, drop_out=drop_out,
                   sep_token_id=tokens.sep_id, source_prefix_id=tokens.source_id,
                   cand1_prefix_id=tokens.cand1_id, cand2_prefix_id=tokens.cand2_id, cand_prefix_id=tokens.cand_id)
        (out / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
        _copy_tokenizer(Path(tokens_dir), out)
        return out
    backbone = Path(backbone_dir)
    backbone.mkdir(parents=True, exist_ok=True)
    (backbone / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    encoder = {k[len("pretrained_model."):]: v for k, v in sd.items() if k.startswith("pretrained_model.")}
    save_file(encoder, str(backbone / "model.safetensors"), metadata={"format": "pt"})
    if Path(tokens_dir).resolve() != backbone.resolve():
        _copy_tokenizer(Path(tokens_dir), backbone)
    ranker = {"ranker_type": "pairranker", "model_type": "deberta", "model_name": str(backbone),
              "cache_dir": None, "load_checkpoint": None, "source_maxlength": SOURCE_MAX_LENGTH,
              "candidate_maxlength": CANDIDATE_MAX_LENGTH, "n_tasks": n_tasks, "num_pos": 5, "num_neg": 5,
              "sub_sampling_mode": "all_pair", "sub_sampling_ratio": 0.4, "loss_type": "instructgpt",
              "reduce_type": "linear", "inference_mode": "bubble", "drop_out": drop_out, "fp16": True,
              "device": None}
    (out / "config.json").write_text(json.dumps(ranker, indent=2))
    torch.save(sd, out / "pytorch_model.bin")
    return out


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for f in _TOKENIZER_FILES:
        if (src / f).is_file():
            shutil.copy(src / f, dst / f)
