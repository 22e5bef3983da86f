"""Test tokenizers and random PairRM models (tests, benchmarks, the equivalence check against
llm-blender), made in-process, deterministic for a seed, with no network."""

from __future__ import annotations

import collections
import json
import math
import re
from pathlib import Path
from typing import Iterable

from sppo_nemo.backends.pairrm.tokenizer import PREFIX_TOKENS

SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
SPECIAL_TOKENS_MAP = {"bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]", "sep_token": "[SEP]",
                      "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}


def _whole_word_unigram(texts: list[str]):
    """Every word and punctuation mark of ``texts`` (scored by frequency) plus single characters."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import Unigram

    counts: collections.Counter = collections.Counter()
    chars: set[str] = set()
    for t in texts:
        for w in re.findall(r"\w+|[^\w\s]", t):
            counts["▁" + w] += 1
            counts[w] += 1
        chars.update(t)
    total = sum(counts.values())
    vocab = [(s, 0.0) for s in SPECIALS] + [(w, math.log(c / total)) for w, c in sorted(counts.items())]
    seen = {w for w, _ in vocab}
    floor = math.log(1 / total) - 10.0
    vocab += [(c, floor) for c in sorted(chars | {"▁"}) if c not in seen and not c.isspace()]
    tok = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.add_special_tokens([AddedToken(s, special=True) for s in SPECIALS])
    return tok


def train_test_tokenizer(texts: Iterable[str], vocab_size: int = 400, with_prefix_tokens: bool = True,
                         whole_words: bool = False):
    """A small DeBERTa-v3-style unigram tokenizer made in-process.

    Same pipeline as the converted deberta-v3 tokenizer (strip, NFKC standing in for the
    precompiled map, collapsed spaces, "▁" on every piece, [CLS] x [SEP]), ids [PAD]=0 [CLS]=1
    [SEP]=2 [UNK]=3, [MASK] after the vocabulary, then (optionally) the four prefix tokens.
    The vocabulary is trained (``UnigramTrainer``, about ``vocab_size`` pieces), or with
    ``whole_words`` made of every word and punctuation mark of ``texts`` (scored by frequency)
    plus single characters, so that those texts tokenize one piece per word, as common English
    does with deberta-v3's 128k pieces.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from tokenizers.trainers import UnigramTrainer

    texts = list(texts)
    tok = _whole_word_unigram(texts) if whole_words else Tokenizer(Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.NFKC(),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    if not whole_words:
        trainer = UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="[UNK]",
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
    """``tok`` as a DeBERTa-v2 tokenizer directory (tokenizer.json and its two configs)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS_MAP, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False, "split_by_punct": False,
         "vocab_type": "spm", **SPECIAL_TOKENS_MAP}, indent=2))
    return out


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
    """A 2-layer DeBERTa-v3-shaped encoder (relative attention with buckets)."""
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              pooler_hidden_size=32)
    kw.update(overrides)
    return deberta_v3_large_config(vocab_size=vocab_size, **kw)


def random_pairrm(vocab_size: int, size: str = "tiny", seed: int = 0, **overrides):
    """A PairRMModel with random weights: ``tiny`` (2 layers, hidden 32) or ``large`` (DeBERTa-v3-large).

    The head is re-drawn with std 3/√fan_in (the encoder keeps transformers' init) so that logits
    are O(1), which makes a 1e-5 comparison of two implementations meaningful.
    """
    import torch

    from sppo_nemo.backends.pairrm.model import pairrm_model_class

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


def tiny_pairrm_checkpoint(texts: Iterable[str], out: str | Path, vocab_size: int = 200, seed: int = 0) -> Path:
    """A random tiny PairRM in the PairRM-hf layout at ``out``, its tokenizer trained on ``texts``
    (the judge the CLI tests point ``judge.model`` at)."""
    from sppo_nemo.backends.pairrm.checkpoint import save_pairrm
    from sppo_nemo.backends.pairrm.tokenizer import load_pairrm_tokenizer

    out = Path(out)
    tok_dir = save_test_tokenizer(train_test_tokenizer(texts, vocab_size=vocab_size), out.with_name(out.name + ".tok"))
    net = random_pairrm(load_pairrm_tokenizer(tok_dir).vocab_size, "tiny", seed=seed)
    return save_pairrm(net, tok_dir, out)
