"""PairRM's tokenizer: a DeBERTa-v2/v3 tokenizer with PairRM's four prefix tokens.

Tokenization is done with the ``tokenizers`` library directly, so that the text pipeline is the one
the checkpoint was trained with, whatever the installed transformers: ``tokenizer.json`` is used as
it is; a bare sentencepiece ``spm.model`` (deberta-v3-large on the hub) is converted the way
transformers 4's ``DebertaV2Converter`` did it (strip, the model's precompiled normalization map,
collapsed spaces, "▁" prefix on every piece, [MASK] appended), reading the model file with our
own reader (:mod:`.spm`). (transformers 5's own ``DebertaV2Tokenizer`` rebuilds a different
normalizer, which is why it is not used here.)

Missing prefix tokens are appended in llm-blender's order (``CrossCompareCollator``) with its
flags (plain added tokens, normalized, not special), so on deberta-v3-large (128001 tokens with
[MASK]) they get ids 128001..128004.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sppo_nemo.backends.pairrm.errors import PairRMError
from sppo_nemo.backends.pairrm.spm import read_spm_model

SOURCE_PREFIX = "<|source|>"
CAND1_PREFIX = "<|candidate1|>"
CAND2_PREFIX = "<|candidate2|>"
CAND_PREFIX = "<|candidate|>"
PREFIX_TOKENS = (SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX, CAND_PREFIX)  # llm-blender's order


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


def read_json(path: Path) -> dict:
    """A JSON file of a checkpoint as a dict ({} when absent); a corrupt one is a PairRMError."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PairRMError(f"{path}: not valid JSON ({exc}); the checkpoint is corrupt: download it again") from None
    if not isinstance(data, dict):
        raise PairRMError(f"{path}: expected a JSON object, got {type(data).__name__}; download the checkpoint again")
    return data


def tokenizer_from_spm(path: str | Path, do_lower_case: bool = False, split_by_punct: bool = False,
                       mask_token: str = "[MASK]"):
    """A ``tokenizers.Tokenizer`` equal to transformers 4's DeBERTa-v2 fast tokenizer for ``path``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram

    spm = read_spm_model(path)
    if spm.model_type != 1:
        raise PairRMError(f"{path}: sentencepiece model type {spm.model_type}; DeBERTa-v2 uses unigram (1): "
                          "give the backbone's own spm.model")
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


def _token_name(value: Any, default: str) -> str:
    if isinstance(value, dict):  # an AddedToken serialised by transformers
        return str(value.get("content", default))
    return str(value) if value else default


def load_pairrm_tokenizer(directory: str | Path) -> PairRMTokens:
    """The tokenizer of a PairRM (or DeBERTa-v3) directory, prefix tokens added when missing.

    ``tokenizer.json`` is used as saved; without it a sentencepiece ``spm.model`` is converted
    (:func:`tokenizer_from_spm`).
    """
    from tokenizers import Tokenizer

    d = Path(directory)
    config = {**read_json(d / "special_tokens_map.json"), **read_json(d / "tokenizer_config.json")}
    cls_token = _token_name(config.get("cls_token"), "[CLS]")
    sep_token = _token_name(config.get("sep_token"), "[SEP]")
    pad_token = _token_name(config.get("pad_token"), "[PAD]")
    if (d / "tokenizer.json").is_file():
        try:
            tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
            raise PairRMError(f"{d / 'tokenizer.json'}: not a readable tokenizer ({exc}); the checkpoint is "
                              "corrupt: download it again") from None
    elif (d / "spm.model").is_file():
        tok = tokenizer_from_spm(d / "spm.model", bool(config.get("do_lower_case", False)),
                                 bool(config.get("split_by_punct", False)),
                                 _token_name(config.get("mask_token"), "[MASK]"))
    else:
        raise PairRMError(f"{d}: no tokenizer.json or spm.model; a PairRM checkpoint (or its backbone, for the "
                          "original llm-blender/PairRM layout) must ship one: download the whole checkpoint, or "
                          "point judge.backbone at the encoder's directory")
    tok.no_truncation()
    tok.no_padding()
    missing = [t for t in PREFIX_TOKENS if tok.token_to_id(t) is None]
    if missing:
        tok.add_tokens(missing)
    ids = {}
    for name, token in (("cls", cls_token), ("sep", sep_token), ("pad", pad_token)):
        ids[name] = tok.token_to_id(token)
        if ids[name] is None:
            raise PairRMError(f"{d}: the tokenizer has no {name} token {token!r}; it is not a DeBERTa-v2/v3 "
                              "tokenizer: use the checkpoint's own tokenizer files")
    return PairRMTokens(tok, ids["cls"], ids["sep"], ids["pad"], sep_token,
                        *(tok.token_to_id(t) for t in PREFIX_TOKENS))
