"""One way to turn a model string into a local checkpoint directory, for the policy and the judge.

A string is a local directory (used as it is) or a hub id ``owner/name`` (its snapshot from the
Hugging Face cache, or downloaded where the network allows). Offline without a cached snapshot,
the error names the download command. The policy path hands directories to ``from_pretrained``;
the megatron workers and PairRM read the files themselves, which is why they need a directory.
"""

from __future__ import annotations

from pathlib import Path

from sppo_nemo.config import looks_like_path
from sppo_nemo.errors import UserError

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
