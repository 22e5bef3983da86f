"""PairRM (Jiang et al., 2023; llm-blender), the paper's preference model, as a Judge on
transformers' DeBERTa-v2, with no llm-blender import.

The model
---------
PairRM is a DeBERTa-v3-large cross-encoder. For a prompt x and two responses (A, B) it reads one
sequence, the concatenation of three separately tokenized pieces::

    [CLS] <|source|> x [SEP]  [CLS] <|candidate1|> A [SEP]  [CLS] <|candidate2|> B [SEP]

takes the last hidden states h at the three prefix tokens, scores each candidate with a shared head
``head_layer`` = Dropout, Linear(2H→H), Tanh, Dropout, Linear(H→n_tasks) on [h_source; h_cand],
and returns the logit s(A, B | x) = mean over tasks of (head(h_src, h_A) − head(h_src, h_B)):
"A is better than B" when positive. It is *not* antisymmetric: s(B, A) ≠ −s(A, B) in general
(position bias), which is why both orders are scored.

Truncation budgets (PairRM's, from llm-blender's ``CrossCompareCollator``): the source piece,
[CLS] and [SEP] included, keeps at most 1224 tokens (``source_max_length``); each candidate piece
keeps at most ``412 + (1224 − len(source piece)) // 2`` tokens (``candidate_max_length`` plus half
of what the source left unused), so one sequence never exceeds 1224 + 2·412 = 2048 tokens.
Truncation cuts the end of a text and keeps its closing [SEP]. As in llm-blender, the separator
string ``[SEP]`` inside a text is replaced by a space; so are the four prefix strings (which
llm-blender would mis-read as extra prefix tokens).

Checkpoints
-----------
``model`` is a local directory or a hub id, in either published layout, with the same parameter
names (``pretrained_model.*`` for the DeBERTa-v2 encoder, ``head_layer.{1,4}.*``):

- ``llm-blender/PairRM-hf``: a DeBERTa-v2 ``config.json`` with PairRM's extra keys (``n_tasks``,
  ``drop_out``, ``source_prefix_id``, ``cand1_prefix_id``, ``cand2_prefix_id``, ...), the weights
  (safetensors or ``pytorch_model.bin``, sharded or not) and the tokenizer files.
- ``llm-blender/PairRM`` (the original): llm-blender's ``RankerConfig`` as ``config.json``
  (``ranker_type: pairranker``, ``model_name: microsoft/deberta-v3-large``, budgets) and the
  ranker's ``pytorch_model.bin``; the encoder's config and tokenizer come from ``model_name`` (or
  the ``backbone`` argument: a directory or hub id), and the four prefix tokens are added to that
  tokenizer in llm-blender's order, as its collator does.

Tokenization is done with the ``tokenizers`` library directly, so that the text pipeline is the one
the checkpoint was trained with, whatever the installed transformers: ``tokenizer.json`` is used as
it is; a bare sentencepiece ``spm.model`` (deberta-v3-large on the hub) is converted the way
transformers 4's ``DebertaV2Converter`` did it (strip, the model's precompiled normalization map,
collapsed spaces, "▁" prefix on every piece, [MASK] appended), reading the model file with a small
protobuf reader of our own. (transformers 5's own ``DebertaV2Tokenizer`` rebuilds a different
normalizer, which is why it is not used here.)

From logits to the K×K matrix
-----------------------------
For K responses all K(K−1) ordered pairs are scored: C[i, j] = s(y_i, y_j | x), C[i, i] = 0.
``probability`` chooses how M[i, j] = P(y_i ≻ y_j | x) is made from C:

``symmetric`` (default)
    M[i, j] = σ((C[i, j] − C[j, i]) / 2): the paper's P = σ(s) (its "relative reward", appendix)
    with s made antisymmetric by averaging the two presentation orders, so M + Mᵀ = 1 exactly and
    M[i, i] = ½. (llm-blender's ``compare(..., mode="[A,B]+[B,A]")`` returns the un-halved
    difference C[i, j] − C[j, i] as its logit.) This is a general preference: no per-response score
    explains it and it can be intransitive.
``score_diff``
    The reference SPPO scripts: llm-blender's ``Blender.rank(return_scores=True)`` aggregates
    s_i = (1/K) Σ_j (C[i, j] − C[j, i]) (K terms, the zero diagonal included), and
    ``compute_prob.py`` sets M[i, j] = σ(s_i − s_j). A Bradley-Terry reading of PairRM. With
    ``loss.winrate: average`` this reproduces the reference scripts' P̂ exactly; it is a fixed
    point of ``loss.winrate: score_diff`` too.

Speed
-----
Every call tokenizes each text once, builds all ordered pairs, sorts them by length and cuts
batches of at most ``batch_size`` sequences and ``max_batch_tokens`` padded tokens, of rows at least
85% as long as the batch's longest (so short texts are never padded to 2048), and runs them under
``torch.inference_mode``, in bf16 on a GPU (``dtype="auto"``) and fp32 on a CPU. A tqdm bar
counts pairs (pairs/s) when stderr is a terminal; ``judge.stats`` keeps pairs, tokens, padded
tokens, forward seconds and FLOPs. :meth:`PairRMJudge.preference_matrices` batches several
prompts together, and :meth:`PairRMJudge.annotate` runs a whole split: one process per device
over disjoint shards, each appending finished prompts to its own shard file, so a crash resumes
where it stopped.

Bad input: a non-string text raises TypeError naming it; an empty or whitespace-only response is
scored like llm-blender scores it (its prefix token alone); a response longer than its budget is
truncated (texts far beyond any budget are cut at a word boundary before tokenizing, which cannot
change the kept tokens); K = 1 gives [[½]] and K = 0 an empty matrix, without loading the model.
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from sppo_nemo.protocols import Prompt

SOURCE_MAX_LENGTH = 1224
CANDIDATE_MAX_LENGTH = 412
SOURCE_PREFIX = "<|source|>"
CAND1_PREFIX = "<|candidate1|>"
CAND2_PREFIX = "<|candidate2|>"
CAND_PREFIX = "<|candidate|>"
# llm-blender's CrossCompareCollator adds them in this order, so on deberta-v3-large (128001
# tokens with [MASK]) they get ids 128001..128004.
PREFIX_TOKENS = (SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX, CAND_PREFIX)
PROBABILITIES = ("symmetric", "score_diff")
DEFAULT_MODEL = "llm-blender/PairRM-hf"
# Texts longer than this many characters per budget token are cut (at a word boundary) before
# tokenizing; the cut is undone when it leaves fewer tokens than the budget (see _encode_texts).
_CHARS_PER_TOKEN_CUT = 16
_IGNORED_KEYS = ("position_ids",)  # buffers some checkpoints carry; never parameters
MIN_FILL = 0.85  # a batch takes rows at least this fraction of its longest row's length
# max_batch_tokens=None: padded tokens per forward by device. On a CPU a single realistic sequence
# per forward is fastest (measured: 0.33 pairs/s at batch 1 vs 0.26-0.27 at batch 3-6 on the
# benchmark workload; the B×heads×L×L attention tensors then cost page faults and cache misses),
# so only short sequences are grouped; a GPU wants large batches.
AUTO_BATCH_TOKENS = {False: 512, True: 65536}


# ============================================================================ probabilities
def sigmoid_antisymmetric(d: np.ndarray) -> np.ndarray:
    """σ(d) computed from |d| so that σ(−d) == 1 − σ(d) holds exactly for an antisymmetric d."""
    d = np.asarray(d, dtype=np.float64)
    p = 1.0 / (1.0 + np.exp(-np.abs(d)))
    return np.where(d >= 0, p, 1.0 - p)


def symmetric_probabilities(c: np.ndarray) -> np.ndarray:
    """M[i, j] = σ((C[i, j] − C[j, i]) / 2) for a K×K logit matrix C (diagonal ignored)."""
    c = np.asarray(c, dtype=np.float64)
    d = (c - np.swapaxes(c, -1, -2)) / 2.0
    return sigmoid_antisymmetric(d)


def aggregated_scores(c: np.ndarray) -> np.ndarray:
    """llm-blender's ``Blender.rank`` scores: s_i = (1/K) Σ_j (C[i, j] − C[j, i]), diagonal 0."""
    c = np.array(c, dtype=np.float64)
    k = c.shape[-1]
    c[..., np.arange(k), np.arange(k)] = 0.0
    return (c - np.swapaxes(c, -1, -2)).mean(axis=-1)


def score_diff_probabilities(c: np.ndarray) -> np.ndarray:
    """M[i, j] = σ(s_i − s_j) with s = :func:`aggregated_scores` (the reference SPPO scripts)."""
    s = aggregated_scores(c)
    return sigmoid_antisymmetric(s[..., :, None] - s[..., None, :])


def probabilities(c: np.ndarray, method: str) -> np.ndarray:
    match method:
        case "symmetric":
            return symmetric_probabilities(c)
        case "score_diff":
            return score_diff_probabilities(c)
        case _:
            raise ValueError(f"probability={method!r}; use one of {PROBABILITIES}")


def candidate_budget(source_len: int, source_max: int = SOURCE_MAX_LENGTH,
                     candidate_max: int = CANDIDATE_MAX_LENGTH) -> int:
    """Tokens a candidate piece may keep next to a source piece of ``source_len`` tokens."""
    return candidate_max + max(source_max - source_len, 0) // 2


# ============================================================================ tokenizer
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _proto_fields(buf: bytes) -> Iterable[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; nested messages stay bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


@dataclass
class SpmModel:
    """What a sentencepiece ModelProto holds that the DeBERTa-v2 tokenizer needs."""

    pieces: list[tuple[str, float, int]]  # (piece, score, type); type 3 = control, 4 = user-defined
    unk_id: int
    model_type: int  # 1 = unigram
    precompiled_charsmap: bytes


def read_spm_model(path: str | Path) -> SpmModel:
    """Parse a sentencepiece ``.model`` file (sentencepiece_model.proto) without protobuf."""
    buf = Path(path).read_bytes()
    pieces: list[tuple[str, float, int]] = []
    unk_id, model_type, charsmap = 0, 1, b""
    for field, _wire, value in _proto_fields(buf):
        if field == 1:  # SentencePiece pieces
            piece, score, ptype = "", 0.0, 1
            for f, _w, v in _proto_fields(value):
                if f == 1:
                    piece = v.decode("utf-8")
                elif f == 2:
                    score = struct.unpack("<f", v)[0]
                elif f == 3:
                    ptype = v
            pieces.append((piece, score, ptype))
        elif field == 2:  # TrainerSpec
            for f, _w, v in _proto_fields(value):
                if f == 3:
                    model_type = v
                elif f == 40:
                    unk_id = v
        elif field == 3:  # NormalizerSpec
            for f, _w, v in _proto_fields(value):
                if f == 2:
                    charsmap = bytes(v)
    if not pieces:
        raise ValueError(f"{path}: no sentencepiece pieces found; is it a sentencepiece model?")
    return SpmModel(pieces, unk_id, model_type, charsmap)


def tokenizer_from_spm(path: str | Path, do_lower_case: bool = False, split_by_punct: bool = False,
                       mask_token: str = "[MASK]"):
    """A ``tokenizers.Tokenizer`` equal to transformers 4's DeBERTa-v2 fast tokenizer for ``path``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram

    spm = read_spm_model(path)
    if spm.model_type != 1:
        raise ValueError(f"{path}: sentencepiece model type {spm.model_type}; DeBERTa-v2 uses unigram (1)")
    tok = Tokenizer(Unigram([(p, s) for p, s, _ in spm.pieces], unk_id=spm.unk_id, byte_fallback=False))
    norms = [normalizers.Lowercase()] if do_lower_case else []
    norms.append(normalizers.Strip())
    if spm.precompiled_charsmap:
        norms.append(normalizers.Precompiled(spm.precompiled_charsmap))
    norms.append(normalizers.Replace(Regex(" {2,}"), " "))
    tok.normalizer = normalizers.Sequence(norms)
    pres = [pre_tokenizers.Punctuation(behavior="isolated")] if split_by_punct else []
    pres.append(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pres)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    # control pieces ([PAD] [CLS] [SEP] [UNK]) are special, user-defined ones are not
    added = [AddedToken(p, normalized=False, special=(t == 3)) for p, _, t in spm.pieces if t in (3, 4)]
    if added:
        tok.add_tokens(added)
    tok.add_special_tokens([AddedToken(mask_token, special=True)])
    return tok


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_name(value: Any, default: str) -> str:
    if isinstance(value, dict):  # an AddedToken serialised by transformers
        return str(value.get("content", default))
    return str(value) if value else default


@dataclass
class PairRMTokens:
    """A tokenizer with PairRM's prefix tokens and the ids the input builder needs."""

    tokenizer: Any  # tokenizers.Tokenizer
    cls_id: int
    sep_id: int
    pad_id: int
    sep_token: str
    source_id: int
    cand1_id: int
    cand2_id: int
    cand_id: int

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


def load_pairrm_tokenizer(directory: str | Path) -> PairRMTokens:
    """The tokenizer of a PairRM (or DeBERTa-v3) directory, prefix tokens added when missing.

    ``tokenizer.json`` is used as saved; without it a sentencepiece ``spm.model`` is converted
    (:func:`tokenizer_from_spm`). Missing prefix tokens are appended in llm-blender's order with
    llm-blender's flags (plain added tokens, normalized, not special).
    """
    from tokenizers import Tokenizer

    d = Path(directory)
    config = {**_read_json(d / "special_tokens_map.json"), **_read_json(d / "tokenizer_config.json")}
    cls_token = _token_name(config.get("cls_token"), "[CLS]")
    sep_token = _token_name(config.get("sep_token"), "[SEP]")
    pad_token = _token_name(config.get("pad_token"), "[PAD]")
    if (d / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    elif (d / "spm.model").is_file():
        tok = tokenizer_from_spm(d / "spm.model", bool(config.get("do_lower_case", False)),
                                 bool(config.get("split_by_punct", False)),
                                 _token_name(config.get("mask_token"), "[MASK]"))
    else:
        raise FileNotFoundError(f"{d}: no tokenizer.json or spm.model; a PairRM checkpoint (or its "
                                "backbone, for the original llm-blender/PairRM layout) must ship one")
    tok.no_truncation()
    tok.no_padding()
    missing = [t for t in PREFIX_TOKENS if tok.token_to_id(t) is None]
    if missing:
        tok.add_tokens(missing)
    ids = {}
    for name, token in (("cls", cls_token), ("sep", sep_token), ("pad", pad_token)):
        ids[name] = tok.token_to_id(token)
        if ids[name] is None:
            raise ValueError(f"{d}: the tokenizer has no {name} token {token!r}")
    return PairRMTokens(tok, ids["cls"], ids["sep"], ids["pad"], sep_token,
                        *(tok.token_to_id(t) for t in PREFIX_TOKENS))


# ============================================================================ model
def _build_model_class():
    import torch
    from torch import nn
    from transformers import DebertaV2Model

    class PairRMModel(nn.Module):
        """PairRM's network: ``pretrained_model`` (DeBERTa-v2) and ``head_layer``, as in both
        published layouts, so their state dicts load without renaming."""

        def __init__(self, config, n_tasks: int = 1, drop_out: float = 0.05):
            super().__init__()
            self.config = config
            self.pretrained_model = DebertaV2Model(config)
            hidden = config.hidden_size
            self.head_layer = nn.Sequential(
                nn.Dropout(drop_out), nn.Linear(2 * hidden, hidden), nn.Tanh(),
                nn.Dropout(drop_out), nn.Linear(hidden, n_tasks),
            )

        def forward(self, input_ids, attention_mask, source_pos, cand1_pos, cand2_pos):
            """Logits s(cand1, cand2 | source), shape (batch,); *_pos index each row's prefix."""
            hidden = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)
            src, c1, c2 = hidden[rows, source_pos], hidden[rows, cand1_pos], hidden[rows, cand2_pos]
            left = self.head_layer(torch.cat([src, c1], dim=-1))
            right = self.head_layer(torch.cat([src, c2], dim=-1))
            return (left - right).float().mean(dim=-1)

    return PairRMModel


_MODEL_CLASS = None


def pairrm_model_class():
    """The ``torch.nn.Module`` class (built on first use so that importing this module is light)."""
    global _MODEL_CLASS
    if _MODEL_CLASS is None:
        _MODEL_CLASS = _build_model_class()
    return _MODEL_CLASS


def deberta_v3_large_config(vocab_size: int = 128005, **overrides):
    """The DeBERTa-v3-large encoder configuration PairRM uses (vocabulary with the 4 prefix tokens)."""
    from transformers import DebertaV2Config

    kw = dict(vocab_size=vocab_size, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
              intermediate_size=4096, hidden_act="gelu", hidden_dropout_prob=0.1,
              attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=0,
              initializer_range=0.02, layer_norm_eps=1e-7, relative_attention=True, max_relative_positions=-1,
              position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
              position_biased_input=False, pooler_hidden_size=1024, pooler_dropout=0, pooler_hidden_act="gelu",
              pad_token_id=0)
    kw.update(overrides)
    return DebertaV2Config(**kw)


def tiny_deberta_config(vocab_size: int, **overrides):
    """A 2-layer DeBERTa-v3-shaped encoder (relative attention with buckets) for tests."""
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              pooler_hidden_size=32)
    kw.update(overrides)
    return deberta_v3_large_config(vocab_size=vocab_size, **kw)


def _load_state_dict(directory: Path) -> dict:
    import torch

    def load_file(p: Path) -> dict:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file as load_st

            return load_st(str(p))
        return torch.load(p, map_location="cpu", weights_only=True)

    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            sd: dict = {}
            for f in files:
                sd.update(load_file(directory / f))
            return sd
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return load_file(directory / name)
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin (sharded or not)")


def _resolve(model: str | Path, what: str) -> Path:
    """A local directory for ``model``: itself, or a hub snapshot (weights, configs, tokenizer)."""
    p = Path(os.path.expanduser(str(model)))
    if p.is_dir():
        return p
    if p.exists() or str(model).startswith((".", "/", "~")) or str(model).count("/") != 1:
        raise FileNotFoundError(f"{what} {model!r}: not a directory, and not a hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download

        # safetensors when the repo has them, else pytorch_model.bin (never both: 1.7 GB each)
        got = Path(snapshot_download(str(model), allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
        if not any(got.glob("*.safetensors")):
            got = Path(snapshot_download(str(model), allow_patterns=["*.json", "*.bin", "*.model", "*.txt"]))
        return got
    except Exception as e:  # offline, unknown repo, no permission: say what to do
        raise FileNotFoundError(
            f"{what} {model!r} is not a local directory and could not be fetched from the hub ({e}); "
            "download it once with `huggingface-cli download` and pass the directory") from e


@dataclass
class LoadedPairRM:
    model: Any  # PairRMModel
    tokens: PairRMTokens
    source_max_length: int
    candidate_max_length: int
    layout: str  # "hf" or "original"
    path: Path


def load_pairrm(model: str | Path, backbone: str | Path | None = None) -> LoadedPairRM:
    """Load a PairRM checkpoint (either layout, see the module docstring) on the CPU in fp32."""
    from transformers import DebertaV2Config

    path = _resolve(model, "PairRM checkpoint")
    config = _read_json(path / "config.json")
    if not config:
        raise FileNotFoundError(f"{path}: no config.json")
    src_max, cand_max = SOURCE_MAX_LENGTH, CANDIDATE_MAX_LENGTH
    if config.get("ranker_type") is not None:  # the original llm-blender/PairRM layout
        if config["ranker_type"] != "pairranker":
            raise ValueError(f"{path}: ranker_type={config['ranker_type']!r}; only PairRM (pairranker) is supported")
        layout = "original"
        base = _resolve(backbone or config.get("model_name") or "microsoft/deberta-v3-large", "backbone")
        deberta = DebertaV2Config.from_pretrained(str(base))
        if deberta.model_type != "deberta-v2":
            raise ValueError(f"{base}: model_type {deberta.model_type!r}; PairRM needs a DeBERTa-v2/v3 encoder")
        tokens = load_pairrm_tokenizer(base)
        n_tasks, drop_out = int(config.get("n_tasks", 1)), float(config.get("drop_out", 0.05))
        src_max = int(config.get("source_maxlength") or src_max)
        cand_max = int(config.get("candidate_maxlength") or cand_max)
    else:
        if config.get("model_type") != "deberta-v2":
            raise ValueError(f"{path}: config.json is neither llm-blender's RankerConfig nor a DeBERTa-v2 "
                             f"PairRM config (model_type={config.get('model_type')!r})")
        layout = "hf"
        deberta = DebertaV2Config.from_pretrained(str(path))
        tokens = load_pairrm_tokenizer(path)
        n_tasks, drop_out = int(config.get("n_tasks", 1)), float(config.get("drop_out", 0.05))
        for key, got in (("source_prefix_id", tokens.source_id), ("cand1_prefix_id", tokens.cand1_id),
                         ("cand2_prefix_id", tokens.cand2_id)):
            if key in config and config[key] != got:
                raise ValueError(f"{path}: config.json says {key}={config[key]} but the tokenizer gives {got}")
    sd = {k: v for k, v in _load_state_dict(path).items() if not k.endswith(_IGNORED_KEYS)}
    emb = sd.get("pretrained_model.embeddings.word_embeddings.weight")
    if emb is None:
        raise ValueError(f"{path}: no pretrained_model.embeddings.word_embeddings.weight; not a PairRM checkpoint")
    deberta.vocab_size = int(emb.shape[0])
    if tokens.vocab_size > deberta.vocab_size:
        raise ValueError(f"{path}: the tokenizer has {tokens.vocab_size} tokens (with the prefix tokens) but the "
                         f"embedding has {deberta.vocab_size} rows; tokenizer and weights do not belong together")
    net = pairrm_model_class()(deberta, n_tasks=n_tasks, drop_out=drop_out)
    own = net.state_dict()
    missing = sorted(k for k in own if k not in sd and not k.endswith(_IGNORED_KEYS))
    unexpected = sorted(k for k in sd if k not in own)
    if missing or unexpected:
        raise ValueError(f"{path}: parameter names do not match PairRM's: missing {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{'...' if len(unexpected) > 8 else ''}")
    net.load_state_dict(sd, strict=False)
    net.eval()
    return LoadedPairRM(net, tokens, src_max, cand_max, layout, path)


def save_pairrm(model, tokens_dir: str | Path, out: str | Path, layout: str = "hf",
                backbone_dir: str | Path | None = None) -> Path:
    """Write ``model`` (a PairRMModel) as a checkpoint in the ``hf`` layout (DeBERTa-v2 config with
    PairRM's keys, model.safetensors, the tokenizer files of ``tokens_dir``), or the ``original``
    layout (RankerConfig config.json and pytorch_model.bin; the encoder config and tokenizer, without
    prefix tokens, go to ``backbone_dir``, named in the RankerConfig as ``model_name``)."""
    import shutil

    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokens = load_pairrm_tokenizer(tokens_dir)
    sd = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()
          if not k.endswith(_IGNORED_KEYS)}
    cfg = model.config.to_dict()
    n_tasks = model.head_layer[4].out_features
    drop_out = float(model.head_layer[0].p)
    tok_files = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spm.model")
    if layout == "hf":
        from safetensors.torch import save_file

        cfg.update(architectures=["DebertaV2PairRM"], n_tasks=n_tasks, drop_out=drop_out,
                   sep_token_id=tokens.sep_id, source_prefix_id=tokens.source_id,
                   cand1_prefix_id=tokens.cand1_id, cand2_prefix_id=tokens.cand2_id, cand_prefix_id=tokens.cand_id)
        (out / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
        for f in tok_files:
            if (Path(tokens_dir) / f).is_file():
                shutil.copy(Path(tokens_dir) / f, out / f)
        return out
    if layout != "original":
        raise ValueError(f"layout={layout!r}; use 'hf' or 'original'")
    if backbone_dir is None:
        raise ValueError("the original layout needs backbone_dir (encoder config and tokenizer)")
    from safetensors.torch import save_file

    backbone = Path(backbone_dir)
    backbone.mkdir(parents=True, exist_ok=True)
    (backbone / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    encoder = {k[len("pretrained_model."):]: v for k, v in sd.items() if k.startswith("pretrained_model.")}
    save_file(encoder, str(backbone / "model.safetensors"), metadata={"format": "pt"})
    for f in tok_files:
        if (Path(tokens_dir) / f).is_file() and Path(tokens_dir).resolve() != backbone.resolve():
            shutil.copy(Path(tokens_dir) / f, backbone / f)
    ranker = {"ranker_type": "pairranker", "model_type": "deberta", "model_name": str(backbone),
              "cache_dir": None, "load_checkpoint": None, "source_maxlength": SOURCE_MAX_LENGTH,
              "candidate_maxlength": CANDIDATE_MAX_LENGTH, "n_tasks": n_tasks, "num_pos": 5, "num_neg": 5,
              "sub_sampling_mode": "all_pair", "sub_sampling_ratio": 0.4, "loss_type": "instructgpt",
              "reduce_type": "linear", "inference_mode": "bubble", "drop_out": drop_out, "fp16": True,
              "device": None}
    (out / "config.json").write_text(json.dumps(ranker, indent=2))
    torch.save(sd, out / "pytorch_model.bin")
    return out


# ============================================================================ test models
def train_test_tokenizer(texts: Iterable[str], vocab_size: int = 400, with_prefix_tokens: bool = True,
                         whole_words: bool = False):
    """A small DeBERTa-v3-style unigram tokenizer made in-process (tests and benchmarks).

    Same pipeline as the converted deberta-v3 tokenizer (strip, NFKC standing in for the
    precompiled map, collapsed spaces, "▁" on every piece, [CLS] x [SEP]), ids [PAD]=0 [CLS]=1
    [SEP]=2 [UNK]=3, [MASK] after the vocabulary, then (optionally) the four prefix tokens.
    The vocabulary is trained (``UnigramTrainer``, about ``vocab_size`` pieces), or with
    ``whole_words`` made of every word and punctuation mark of ``texts`` (scored by frequency)
    plus single characters, so that those texts tokenize one piece per word, as common English
    does with deberta-v3's 128k pieces.
    """
    import collections
    import re

    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from tokenizers.trainers import UnigramTrainer

    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    texts = list(texts)
    if whole_words:
        counts: collections.Counter = collections.Counter()
        chars: set[str] = set()
        for t in texts:
            for w in re.findall(r"\w+|[^\w\s]", t):
                counts["▁" + w] += 1
                counts[w] += 1
            chars.update(t)
        total = sum(counts.values())
        vocab = [(s, 0.0) for s in specials] + [(w, math.log(c / total)) for w, c in sorted(counts.items())]
        seen = {w for w, _ in vocab}
        floor = math.log(1 / total) - 10.0
        vocab += [(c, floor) for c in sorted(chars | {"▁"}) if c not in seen and not c.isspace()]
        tok = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=False))
        tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    else:
        tok = Tokenizer(Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.NFKC(),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    if not whole_words:
        trainer = UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="[UNK]",
                                 show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.add_special_tokens([AddedToken("[MASK]", special=True)])
    if with_prefix_tokens:
        tok.add_tokens(list(PREFIX_TOKENS))
    return tok


def save_test_tokenizer(tok, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    special = {"bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]", "sep_token": "[SEP]",
               "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False, "split_by_punct": False,
         "vocab_type": "spm", **special}, indent=2))
    return out


def random_pairrm(vocab_size: int, size: str = "tiny", seed: int = 0, **overrides):
    """A PairRMModel with random weights: ``tiny`` (2 layers, hidden 32) or ``large`` (DeBERTa-v3-large).

    The head is re-drawn with std 3/√fan_in (the encoder keeps transformers' init) so that logits
    are O(1), which makes a 1e-5 comparison of two implementations meaningful.
    """
    import torch

    if size not in ("tiny", "large"):
        raise ValueError(f"size={size!r}; use 'tiny' or 'large'")
    config = (tiny_deberta_config if size == "tiny" else deberta_v3_large_config)(vocab_size=vocab_size, **overrides)
    torch.manual_seed(seed)
    net = pairrm_model_class()(config)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for m in net.head_layer:
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (3.0 / m.in_features ** 0.5))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return net.eval()


# ============================================================================ inputs
def _check_texts(texts: Sequence[Any], label: str) -> None:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{label}[{i}] must be str, got {type(t).__name__}")


def check_inputs(prompts: Sequence[Any], responses: Sequence[Sequence[Any]]) -> None:
    """Equal lengths, Prompt records, and a list of str per prompt, or a clear error naming the index."""
    if len(prompts) != len(responses):
        raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(responses)} response lists")
    _check_prompts(prompts)
    for n, rs in enumerate(responses):
        if isinstance(rs, str):
            raise TypeError(f"responses[{n}] must be a list of str, got a str")
        _check_texts(rs, f"responses[{n}]")


def _check_prompts(prompts: Sequence[Any]) -> None:
    for i, p in enumerate(prompts):
        if not isinstance(getattr(p, "text", None), str):
            raise TypeError(f"prompts[{i}] must be a Prompt with a str text, got {type(p).__name__}"
                            + (f" with text of type {type(p.text).__name__}" if hasattr(p, "text") else ""))


class PairEncoder:
    """Texts → PairRM input ids, with PairRM's budgets; each text tokenized once per call."""

    def __init__(self, tokens: PairRMTokens, source_max_length: int = SOURCE_MAX_LENGTH,
                 candidate_max_length: int = CANDIDATE_MAX_LENGTH):
        if source_max_length < 3 or candidate_max_length < 3:
            raise ValueError("source_max_length and candidate_max_length must be at least 3 "
                             "([CLS], the prefix token, [SEP])")
        self.tokens = tokens
        self.source_max = source_max_length
        self.candidate_max = candidate_max_length
        self.max_length = source_max_length + 2 * candidate_max_length
        self._scrub = (tokens.sep_token, *PREFIX_TOKENS)

    def clean(self, text: str) -> str:
        for s in self._scrub:
            if s in text:
                text = text.replace(s, " ")
        return text

    def _encode_texts(self, texts: Sequence[str], prefix: str, budget: int) -> list[list[int]]:
        """[CLS] prefix text [SEP] for each text, truncated to ``budget`` tokens (end cut, [SEP] kept)."""
        tok = self.tokens.tokenizer
        limit = _CHARS_PER_TOKEN_CUT * budget
        prepared, cut = [], []
        for t in texts:
            t = self.clean(t)
            space = t.rfind(" ", limit // 2, limit) if len(t) > limit else -1
            if space > 0:  # far beyond any budget: cut at a word boundary first
                t = t[:space]
            cut.append(space > 0)
            prepared.append(prefix + t)
        encs = tok.encode_batch(prepared, add_special_tokens=False)
        out = []
        for i, enc in enumerate(encs):
            ids = enc.ids
            if cut[i] and len(ids) < budget:  # the cut removed tokens that would have been kept
                ids = tok.encode(prefix + self.clean(texts[i]), add_special_tokens=False).ids
            out.append([self.tokens.cls_id, *ids[:budget - 2], self.tokens.sep_id])
        return out

    def encode_sources(self, texts: Sequence[str]) -> list[list[int]]:
        return self._encode_texts(texts, SOURCE_PREFIX, self.source_max)

    def encode_candidates(self, texts: Sequence[str]) -> list[list[int]]:
        """Candidate pieces with the generic ``<|candidate|>`` prefix, cut to the largest budget."""
        return self._encode_texts(texts, CAND_PREFIX, candidate_budget(3, self.source_max, self.candidate_max))

    def pair(self, source: list[int], a: list[int], b: list[int]) -> tuple[list[int], int, int, int]:
        """One sequence source + A + B (A as candidate1, B as candidate2) and the three prefix positions."""
        budget = candidate_budget(len(source), self.source_max, self.candidate_max)
        t = self.tokens
        a = a if len(a) <= budget else a[:budget - 1] + [t.sep_id]
        b = b if len(b) <= budget else b[:budget - 1] + [t.sep_id]
        ids = [*source, t.cls_id, t.cand1_id, *a[2:], t.cls_id, t.cand2_id, *b[2:]]
        return ids, 1, len(source) + 1, len(source) + len(a) + 1


def make_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int,
                 min_fill: float = MIN_FILL) -> list[list[int]]:
    """Indices grouped longest first: at most ``batch_size`` rows and ``max_batch_tokens`` padded
    tokens (rows × longest row) per batch, and only rows at least ``min_fill`` as long as the
    batch's longest (attention cost grows with the square of the padded length); a row longer
    than the token cap goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (len(cur) >= batch_size or lengths[cur[0]] * (len(cur) + 1) > max_batch_tokens
                    or lengths[i] < min_fill * lengths[cur[0]]):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def deberta_forward_flops(config, batch: int, length: int) -> float:
    """Multiply-add FLOPs (×2) of one DeBERTa-v2 encoder forward on a (batch, length) block.

    Per layer: Q, K, V, output projections 4·2·L·H²; feed-forward 2·2·L·H·I; scores and values
    2·2·L²·H; disentangled c2p and p2c scores 2·2·L·(2k)·H against the 2k relative embeddings
    (k = position_buckets), whose key/query projections cost 2·2·(2k)·H² per sequence. The head
    and embeddings are negligible and left out.
    """
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    k = config.position_buckets if getattr(config, "position_buckets", -1) > 0 else config.max_position_embeddings
    per_layer = (8 * length * h * h + 4 * length * h * i + 4 * length * length * h
                 + 8 * length * k * h + 8 * k * h * h)
    return float(batch) * n * per_layer


# ============================================================================ the judge
class PairRMJudge:
    """:class:`~sppo_nemo.protocols.Judge` backed by PairRM (see the module docstring).

    Parameters: ``model`` a directory or hub id in either layout; ``batch_size`` sequences and
    ``max_batch_tokens`` padded tokens per forward (None: 512 on a CPU, 65536 on a GPU; see
    ``AUTO_BATCH_TOKENS``); ``dtype`` ``auto`` (bf16 on CUDA, fp32 on CPU; bf16 on a CPU with
    AVX512-BF16 was 1.4× faster in benchmarks/bench_pairrm.py but moved logits by up to 0.1),
    ``fp32``, ``bf16`` or ``fp16``; ``device`` ``auto`` (``cuda`` when available), ``cpu``, ``cuda:N``;
    ``probability`` ``symmetric`` or ``score_diff``; ``source_max_length`` / ``candidate_max_length``
    override the checkpoint's budgets (default 1224 / 412); ``backbone`` the encoder directory or hub
    id for the original layout; ``progress`` True/False, None: a bar only on a terminal.
    """

    name = "pairrm"

    def __init__(self, model: str | Path = DEFAULT_MODEL, batch_size: int = 64, max_batch_tokens: int | None = None,
                 dtype: str = "auto", device: str = "auto", probability: str = "symmetric",
                 source_max_length: int | None = None, candidate_max_length: int | None = None,
                 backbone: str | Path | None = None, progress: bool | None = None):
        if probability not in PROBABILITIES:
            raise ValueError(f"probability={probability!r}; use one of {PROBABILITIES}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1 (or None: by device), got {max_batch_tokens}")
        if dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"dtype={dtype!r}; use auto, fp32, bf16 or fp16")
        self.model_name = str(model)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.dtype_name = dtype
        self.device_name = device
        self.probability = probability
        self.backbone = backbone
        self.progress = progress
        self._budgets = (source_max_length, candidate_max_length)
        self._net = None
        self._encoder: PairEncoder | None = None
        self._bar = None
        self.device = None
        self.dtype = None
        self.stats = {"pairs": 0, "forward_s": 0.0, "tokens": 0, "padded_tokens": 0, "flops": 0.0}

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_model(cls, net, tokens: PairRMTokens, **kwargs) -> "PairRMJudge":
        """A judge around an in-memory PairRMModel and tokenizer (tests, benchmarks)."""
        judge = cls(model="<in-memory>", **kwargs)
        judge._attach(net, tokens, SOURCE_MAX_LENGTH, CANDIDATE_MAX_LENGTH)
        return judge

    def _attach(self, net, tokens: PairRMTokens, src_max: int, cand_max: int) -> None:
        import torch

        dev = self.device_name
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        dtype = self.dtype_name
        if dtype == "auto":
            dtype = "bf16" if self.device.type == "cuda" else "fp32"
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        if self.max_batch_tokens is None:
            self.max_batch_tokens = AUTO_BATCH_TOKENS[self.device.type == "cuda"]
        self._net = net.to(device=self.device, dtype=self.dtype).eval()
        s, c = self._budgets
        self._encoder = PairEncoder(tokens, s or src_max, c or cand_max)

    def _load(self) -> None:
        if self._net is not None:
            return
        loaded = load_pairrm(self.model_name, self.backbone)
        self._attach(loaded.model, loaded.tokens, loaded.source_max_length, loaded.candidate_max_length)

    @property
    def encoder(self) -> PairEncoder:
        self._load()
        return self._encoder

    @property
    def config(self):
        self._load()
        return self._net.config

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._net = None
        self._encoder = None

    # ---------------------------------------------------------------- core: logits
    def _progress(self, n: int) -> None:
        if self.progress is False:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(desc="pairrm", unit="pair", disable=None if self.progress is None else False,
                             dynamic_ncols=True, leave=False)
        self._bar.update(n)

    def _run_pairs(self, seqs: list[tuple[list[int], int, int, int]]) -> np.ndarray:
        """Logits for prepared sequences, in order; batches by length."""
        import torch

        out = np.zeros(len(seqs), dtype=np.float64)
        if not seqs:
            return out
        lengths = [len(s[0]) for s in seqs]
        pad = self._encoder.tokens.pad_id
        config = self._net.config
        with torch.inference_mode():
            for group in make_batches(lengths, self.batch_size, self.max_batch_tokens):
                width = lengths[group[0]]
                ids = torch.full((len(group), width), pad, dtype=torch.long)
                mask = torch.zeros((len(group), width), dtype=torch.long)
                for r, i in enumerate(group):
                    ids[r, :lengths[i]] = torch.tensor(seqs[i][0], dtype=torch.long)
                    mask[r, :lengths[i]] = 1
                pos = torch.tensor([seqs[i][1:] for i in group], dtype=torch.long)
                t0 = time.perf_counter()
                logits = self._net(ids.to(self.device), mask.to(self.device), pos[:, 0].to(self.device),
                                   pos[:, 1].to(self.device), pos[:, 2].to(self.device))
                logits = logits.cpu().numpy()
                self.stats["forward_s"] += time.perf_counter() - t0
                out[group] = logits
                self.stats["pairs"] += len(group)
                self.stats["tokens"] += sum(lengths[i] for i in group)
                self.stats["padded_tokens"] += width * len(group)
                self.stats["flops"] += deberta_forward_flops(config, len(group), width)
                self._progress(len(group))
        return out

    def logits(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """PairRM's raw logit s(a_i, b_i | x_i) with a_i as candidate 1, one order only, shape (n,)."""
        if not len(prompts) == len(a) == len(b):
            raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(a)} a, {len(b)} b")
        _check_prompts(prompts)
        _check_texts(a, "a")
        _check_texts(b, "b")
        if not prompts:
            return np.zeros(0)
        self._load()
        enc = self._encoder
        sources = enc.encode_sources([p.text for p in prompts])
        cands = enc.encode_candidates([*a, *b])
        n = len(prompts)
        return self._run_pairs([enc.pair(sources[i], cands[i], cands[n + i]) for i in range(n)])

    def logit_matrices(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """C[i, j] = s(y_i, y_j | x) for every ordered pair i ≠ j of each prompt (C[i, i] = 0),
        all prompts' pairs batched together."""
        check_inputs(prompts, responses)
        mats = [np.zeros((len(rs), len(rs))) for rs in responses]
        todo = [n for n, rs in enumerate(responses) if len(rs) >= 2]
        if not todo:
            return mats
        self._load()
        enc = self._encoder
        sources = enc.encode_sources([prompts[n].text for n in todo])
        flat = [r for n in todo for r in responses[n]]
        cands = enc.encode_candidates(flat)
        seqs, where = [], []
        start = 0
        for s, n in zip(sources, todo):
            k = len(responses[n])
            cs = cands[start:start + k]
            start += k
            for i in range(k):
                for j in range(k):
                    if i != j:
                        seqs.append(enc.pair(s, cs[i], cs[j]))
                        where.append((n, i, j))
        values = self._run_pairs(seqs)
        for (n, i, j), v in zip(where, values):
            mats[n][i, j] = v
        return mats

    # ---------------------------------------------------------------- Judge protocol
    def compare(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """P(a_i ≻ b_i | x_i), shape (n,): the [0, 1] entry of the 2×2 matrix of (a_i, b_i)."""
        if not len(prompts) == len(a) == len(b):
            raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(a)} a, {len(b)} b")
        mats = self.preference_matrices(prompts, [[x, y] for x, y in zip(a, b)])
        return np.array([m[0, 1] for m in mats])

    def preference_matrix(self, prompt: Prompt, responses: Sequence[str]) -> np.ndarray:
        """M[i, j] = P(y_i ≻ y_j | x), K×K, M + Mᵀ = 1, diagonal ½ (K ≤ 1: no model call)."""
        return self.preference_matrices([prompt], [responses])[0]

    def preference_matrices(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """:meth:`preference_matrix` for many prompts, their pairs batched together."""
        return [self.to_probabilities(c) for c in self.logit_matrices(prompts, responses)]

    def to_probabilities(self, c: np.ndarray) -> np.ndarray:
        if c.shape[-1] <= 1:
            return np.full(c.shape, 0.5)
        return probabilities(c, self.probability)

    def scores(self, prompt: Prompt, responses: Sequence[str]) -> np.ndarray:
        """llm-blender's ``Blender.rank(..., return_scores=True)`` scores of the responses."""
        return aggregated_scores(self.logit_matrices([prompt], [responses])[0])

    # ---------------------------------------------------------------- a whole split, sharded
    def annotate(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]], workdir: str | Path,
                 devices: Sequence[str] | None = None, chunk_prompts: int = 32) -> list[np.ndarray]:
        """Preference matrices for a whole split, resumable, one process per device.

        Prompt n goes to shard n mod len(devices). Each shard appends every finished chunk of
        ``chunk_prompts`` prompts to ``workdir/shard_<r>.jsonl`` (logit matrices, flushed and
        fsynced); a rerun first reads every shard file, drops a torn last line, and scores only the
        prompts no file holds yet (also with a different number of devices). ``devices``: default
        every visible CUDA device, else ``["cpu"]``; one device runs in this process.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(responses)} response lists")
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if devices is None:
            import torch

            devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]
        done = read_shards(workdir)
        todo = [n for n in range(len(prompts)) if n not in done]
        shards = [todo[r::len(devices)] for r in range(len(devices))]
        if todo and len(devices) == 1:
            _annotate_into(self, [(n, prompts[n], list(responses[n])) for n in todo],
                           workdir / "shard_0.jsonl", chunk_prompts)
        elif todo:
            import torch.multiprocessing as mp

            ctx = mp.get_context("spawn")
            kwargs = dict(model=self.model_name, batch_size=self.batch_size, max_batch_tokens=self.max_batch_tokens,
                          dtype=self.dtype_name, probability=self.probability, backbone=self.backbone,
                          source_max_length=self._budgets[0], candidate_max_length=self._budgets[1], progress=False)
            procs = []
            for r, (dev, idx) in enumerate(zip(devices, shards)):
                if not idx:
                    continue
                items = [(n, prompts[n], list(responses[n])) for n in idx]
                p = ctx.Process(target=_shard_worker, args=(kwargs, dev, items, str(workdir / f"shard_{r}.jsonl"),
                                                            chunk_prompts))
                p.start()
                procs.append((dev, p))
            failed = []
            for dev, p in procs:
                p.join()
                if p.exitcode != 0:
                    failed.append(f"{dev} (exit {p.exitcode})")
            if failed:
                raise RuntimeError(f"PairRM shard workers failed on {', '.join(failed)}; finished prompts are kept "
                                   f"in {workdir}, rerun to resume")
        done = read_shards(workdir)
        missing = [n for n in range(len(prompts)) if n not in done]
        if missing:
            raise RuntimeError(f"{len(missing)} prompts have no matrix in {workdir} (first: {missing[:5]})")
        out = []
        for n in range(len(prompts)):
            row = done[n]
            if row["prompt_id"] != prompts[n].id or len(row["logits"]) != len(responses[n]):
                raise RuntimeError(f"{workdir}: prompt {n} was annotated as {row['prompt_id']!r} with "
                                   f"{len(row['logits'])} responses, now it is {prompts[n].id!r} with "
                                   f"{len(responses[n])}; delete the folder to start over")
            out.append(self.to_probabilities(np.asarray(row["logits"], dtype=np.float64)))
        return out


def _annotate_into(judge: PairRMJudge, items: list[tuple[int, Prompt, list[str]]], path: Path,
                   chunk_prompts: int) -> None:
    """Append {index, prompt_id, logits} for each item to ``path``, one fsynced chunk at a time."""
    _truncate_torn_line(path)
    with open(path, "a", encoding="utf-8") as f:
        for start in range(0, len(items), chunk_prompts):
            chunk = items[start:start + chunk_prompts]
            mats = judge.logit_matrices([p for _, p, _ in chunk], [rs for _, _, rs in chunk])
            for (n, p, _), c in zip(chunk, mats):
                f.write(json.dumps({"index": n, "prompt_id": p.id, "logits": c.tolist()}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _shard_worker(kwargs: dict, device: str, items, path: str, chunk_prompts: int) -> None:
    _annotate_into(PairRMJudge(device=device, **kwargs), items, Path(path), chunk_prompts)


def _truncate_torn_line(path: Path) -> None:
    """Drop a last line without its newline (a crash mid-write), so appends start on a clean line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def read_shards(workdir: str | Path) -> dict[int, dict]:
    """Every complete row of ``workdir/shard_*.jsonl``, by prompt index."""
    rows: dict[int, dict] = {}
    for p in sorted(Path(workdir).glob("shard_*.jsonl")):
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line
            rows[int(row["index"])] = row
    return rows


__all__ = [
    "PairRMJudge", "PairEncoder", "PairRMTokens", "load_pairrm", "save_pairrm", "load_pairrm_tokenizer",
    "symmetric_probabilities", "score_diff_probabilities", "aggregated_scores", "probabilities",
    "candidate_budget", "make_batches", "deberta_forward_flops", "random_pairrm", "train_test_tokenizer",
    "save_test_tokenizer", "read_spm_model", "tokenizer_from_spm", "pairrm_model_class",
    "deberta_v3_large_config", "tiny_deberta_config", "read_shards",
]
