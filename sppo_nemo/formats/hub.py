"""One way to turn a model string into a local checkpoint directory, for the policy and the judge.

A string is a local directory (used as it is) or a hub id ``owner/name`` (its snapshot from the
Hugging Face cache, or downloaded where the network allows). Offline without a cached snapshot,
the error names the download command. The policy path hands directories to ``from_pretrained``;
the megatron workers and PairRM read the files themselves, which is why they need a directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from sppo_nemo.schema.config import SHIPPED_SMOLLM2, looks_like_path, resolve_path
from sppo_nemo.schema.errors import UserError

# The shape of policy.model=smollm2 (SmolLM2-135M-Instruct), for checking a parallel layout before
# the gguf is converted; tests/unit/test_megatron_convert.py compares it with the converted config.
SMOLLM2_CONFIG = {"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9,
                  "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
                  "tie_word_embeddings": True}

# The shapes of the paper's base models (their hub config.json, the keys the layout and cost checks
# read), so that a recipe naming them validates, dry-runs and estimates on a machine without the
# weights; a local checkpoint or a cached snapshot's own config.json comes first.
KNOWN_CONFIGS = {
    "mistralai/Mistral-7B-Instruct-v0.2": {
        "model_type": "mistral", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
        "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "sliding_window": None,
        "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "hidden_act": "silu"},
    "meta-llama/Meta-Llama-3-8B-Instruct": {
        "model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
        "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
        "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-05,
        "tie_word_embeddings": False, "hidden_act": "silu"},
}

# Configs, tokenizers and safetensors weights; *.bin only when a repo has no safetensors.
PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


class ModelNotFound(UserError):
    pass


def local_dir(model: str | Path, what: str, key: str) -> Path:
    """The directory holding ``model``; ``what`` and ``key`` name it in errors ("PairRM checkpoint",
    "judge.model")."""
    p = Path(str(model)).expanduser()
    if p.is_dir():
        return p
    if looks_like_path(str(model)):
        raise ModelNotFound(f"{key}: {what} {str(model)!r} is not a directory, and not a hub id (owner/name); "
                            f"give a checkpoint directory or a hub id")
    try:
        from huggingface_hub import snapshot_download

        got = Path(snapshot_download(str(model), allow_patterns=PATTERNS))
        if not any(got.glob("*.safetensors")):
            got = Path(snapshot_download(str(model), allow_patterns=PATTERNS + ["*.bin"]))
        return got
    except Exception as exc:  # offline without a cached snapshot, unknown repo, no permission
        raise ModelNotFound(
            f"{key}: {what} {str(model)!r} is neither a local directory nor a hub id whose snapshot is cached or "
            f"can be downloaded ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); download "
            f"it first (huggingface-cli download {model}) or point {key} at the directory") from None


class UnreadableConfig(UserError):
    pass


def policy_config(model: str, base_dir: Path) -> dict | None:
    """The policy's ``config.json`` when it can be read without the network (the shipped SmolLM2's
    shape, a local checkpoint directory's file, a hub id's cached snapshot, or the known shape of the
    paper's base models), for load-time checks of a parallel layout and the cost estimate; None for
    another hub id. A damaged file is an UnreadableConfig naming it."""
    if model == SHIPPED_SMOLLM2:
        return SMOLLM2_CONFIG
    if not looks_like_path(model):
        cached = _cached_hub_config(model)
        return cached if cached is not None else KNOWN_CONFIGS.get(model)
    path = resolve_path(model, base_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UnreadableConfig(f"policy.model: cannot read {model}/config.json ({e}); give an HF checkpoint "
                              f"directory") from None


def _cached_hub_config(model: str) -> dict | None:
    """A hub id's config.json from the local Hugging Face cache, never the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        got = try_to_load_from_cache(model, "config.json")
    except Exception:  # a malformed id
        return None
    if not isinstance(got, str):
        return None
    try:
        return json.loads(Path(got).read_text())
    except (OSError, ValueError):
        return None


def config_source(model: str, base_dir: Path) -> str:
    """Where :func:`policy_config` found the shape, for messages that must say so."""
    if model == SHIPPED_SMOLLM2:
        return "the shipped SmolLM2-135M-Instruct's shape"
    if looks_like_path(model):
        return f"{model}/config.json"
    if _cached_hub_config(model) is not None:
        return f"{model}'s cached config.json"
    if model in KNOWN_CONFIGS:
        return f"{model}'s published architecture (sppo_nemo/formats/hub.py KNOWN_CONFIGS; the checkpoint is not local)"
    return f"nothing: {model} is not local, cached or known"
