"""One way to turn a model string into a local checkpoint directory, for the policy and the judge.

A string is a local directory (used as it is) or a hub id ``owner/name`` (its snapshot from the
Hugging Face cache, or downloaded where the network allows). Offline without a cached snapshot,
the error names the download command. The policy path hands directories to ``from_pretrained``;
the megatron workers and PairRM read the files themselves, which is why they need a directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from sppo_nemo.config import SHIPPED_SMOLLM2, looks_like_path, resolve_path
from sppo_nemo.errors import UserError

# The shape of policy.model=smollm2 (SmolLM2-135M-Instruct), for checking a parallel layout before
# the gguf is converted; tests/unit/test_megatron_convert.py compares it with the converted config.
SMOLLM2_CONFIG = {"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9,
                  "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
                  "tie_word_embeddings": True}

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
    shape, or a local checkpoint directory's file), for load-time checks of a parallel layout;
    None for a hub id. A damaged file is an UnreadableConfig naming it."""
    if model == SHIPPED_SMOLLM2:
        return SMOLLM2_CONFIG
    if not looks_like_path(model):
        return None
    path = resolve_path(model, base_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UnreadableConfig(f"policy.model: cannot read {model}/config.json ({e}); give an HF checkpoint "
                              f"directory") from None
