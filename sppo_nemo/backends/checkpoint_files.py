"""What a policy checkpoint directory must hold, and writing one; no transformers import (the model
and tokenizer objects save themselves). ``hf.py`` loads checkpoints and re-exports these."""

from __future__ import annotations

import errno
from pathlib import Path

from sppo_nemo.schema.errors import UserError


class ModelLoadError(UserError):
    pass


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf")


def check_checkpoint(path: str) -> None:
    """A local checkpoint directory has a config, weights and tokenizer files, or the error names
    what is missing (before transformers would talk about sentencepiece or a missing file)."""
    d = Path(path)
    if not d.is_dir():
        return  # a hub id: from_pretrained resolves it
    missing = []
    if not (d / "config.json").is_file():
        missing.append("config.json")
    if not any(any(d.glob(p)) for p in WEIGHT_PATTERNS):
        missing.append("weights (model.safetensors or shards)")
    if not any((d / f).is_file() for f in TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json / tokenizer_config.json)")
    if missing:
        raise ModelLoadError(f"{d} is not a complete checkpoint: no {', no '.join(missing)}. Copy the missing files "
                             f"from the checkpoint it came from, or rerun the stage that wrote it (--restart-from).")


def save_checkpoint(model, tokenizer, out: Path) -> None:
    """π_{t+1} as an HF checkpoint. safetensors reports a full disk as its own error type: it is
    raised as the OSError(ENOSPC) the CLI turns into 'the disk is full'."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    except OSError:
        raise
    except Exception as exc:
        if "No space left" in str(exc) or "StorageFull" in str(exc):
            raise OSError(errno.ENOSPC, "No space left on device", str(out)) from None
        raise
