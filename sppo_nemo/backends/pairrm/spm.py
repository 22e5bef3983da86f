"""A reader for sentencepiece ``.model`` files (sentencepiece_model.proto), without protobuf.

DeBERTa-v3 on the hub (microsoft/deberta-v3-large, the backbone of the original
llm-blender/PairRM layout) ships its tokenizer only as a bare ``spm.model``. The tokenizer module
turns what this reader returns into a ``tokenizers.Tokenizer``; reading the file ourselves keeps
sentencepiece and protobuf out of the install.

Fields read (field numbers of sentencepiece_model.proto): ModelProto.pieces (1: piece,
2: score, 3: type), TrainerSpec (2) model_type (3) and unk_id (40), NormalizerSpec (3)
precompiled_charsmap (2). Everything else is skipped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from sppo_nemo.backends.pairrm.errors import PairRMError


@dataclass
class SpmModel:
    """What a sentencepiece ModelProto holds that the DeBERTa-v2 tokenizer needs."""

    pieces: list[tuple[str, float, int]]  # (piece, score, type); type 3 = control, 4 = user-defined
    unk_id: int
    model_type: int  # 1 = unigram
    precompiled_charsmap: bytes


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
        if i > len(buf):
            raise ValueError("the message ends inside a field")
        yield field, wire, value


def _parse(buf: bytes) -> SpmModel:
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
    return SpmModel(pieces, unk_id, model_type, charsmap)


def read_spm_model(path: str | Path) -> SpmModel:
    """Parse a sentencepiece ``.model`` file; a file that is not one is a :class:`PairRMError`."""
    try:
        spm = _parse(Path(path).read_bytes())
    except (ValueError, IndexError, TypeError, AttributeError, struct.error) as exc:
        raise PairRMError(f"{path}: not a readable sentencepiece model ({type(exc).__name__}: {exc}); the file is "
                          "corrupt or truncated: download the tokenizer again") from None
    if not spm.pieces:
        raise PairRMError(f"{path}: no sentencepiece pieces found; not a sentencepiece model: download the "
                          "tokenizer again")
    return spm
