"""Texts → PairRM's input sequences, batched by length, and what a forward on them costs.

The sequence
------------
For a prompt x and two responses (A, B) PairRM reads one sequence, the concatenation of three
separately tokenized pieces::

    [CLS] <|source|> x [SEP]  [CLS] <|candidate1|> A [SEP]  [CLS] <|candidate2|> B [SEP]

Truncation budgets (PairRM's, from llm-blender's ``CrossCompareCollator``): the source piece,
[CLS] and [SEP] included, keeps at most 1224 tokens (``source_max_length``); each candidate piece
keeps at most ``412 + (1224 − len(source piece)) // 2`` tokens (``candidate_max_length`` plus half
of what the source left unused), so one sequence never exceeds 1224 + 2·412 = 2048 tokens.
Truncation cuts the end of a text and keeps its closing [SEP]. As in llm-blender, the separator
string ``[SEP]`` inside a text is replaced by a space; so are the four prefix strings (which
llm-blender would mis-read as extra prefix tokens). An empty or whitespace-only response is scored
like llm-blender scores it (its prefix token alone); texts far beyond any budget are cut at a word
boundary before tokenizing, which cannot change the kept tokens.

Batching
--------
Every call tokenizes each text once, builds all ordered pairs, sorts them by length and cuts
batches of at most ``batch_size`` sequences and ``max_batch_tokens`` padded tokens, of rows at least
85% as long as the batch's longest (so short texts are never padded to 2048).
"""

from __future__ import annotations

from typing import Sequence

from sppo_nemo.backends.pairrm.tokenizer import CAND_PREFIX, PREFIX_TOKENS, SOURCE_PREFIX, PairRMTokens
from sppo_nemo.schema.protocols import Prompt

SOURCE_MAX_LENGTH = 1224
CANDIDATE_MAX_LENGTH = 412
# Texts longer than this many characters per budget token are cut (at a word boundary) before
# tokenizing; the cut is undone when it leaves fewer tokens than the budget (see _encode_texts).
CHARS_PER_TOKEN_CUT = 16
MIN_FILL = 0.85  # a batch takes rows at least this fraction of its longest row's length

Seq = tuple[list[int], int, int, int]  # input ids and the positions of the three prefix tokens


def candidate_budget(source_len: int, source_max: int = SOURCE_MAX_LENGTH,
                     candidate_max: int = CANDIDATE_MAX_LENGTH) -> int:
    """Tokens a candidate piece may keep next to a source piece of ``source_len`` tokens."""
    return candidate_max + max(source_max - source_len, 0) // 2


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
        limit = CHARS_PER_TOKEN_CUT * budget
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

    def pair(self, source: list[int], a: list[int], b: list[int]) -> Seq:
        """One sequence source + A + B (A as candidate1, B as candidate2) and the three prefix positions."""
        budget = candidate_budget(len(source), self.source_max, self.candidate_max)
        t = self.tokens
        a = a if len(a) <= budget else a[:budget - 1] + [t.sep_id]
        b = b if len(b) <= budget else b[:budget - 1] + [t.sep_id]
        ids = [*source, t.cls_id, t.cand1_id, *a[2:], t.cls_id, t.cand2_id, *b[2:]]
        return ids, 1, len(source) + 1, len(source) + len(a) + 1

    def ordered_pairs(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]],
                      single: bool = False) -> tuple[list[Seq], list[tuple[int, int, int]]]:
        """Every ordered pair i ≠ j of each prompt's responses as a sequence, and where its logit goes
        (prompt n, i, j); ``single``: each unordered pair once, as (i, j) with i < j. Each text is
        tokenized once."""
        sources = self.encode_sources([p.text for p in prompts])
        cands = self.encode_candidates([r for rs in responses for r in rs])
        seqs, where = [], []
        start = 0
        for n, (s, rs) in enumerate(zip(sources, responses)):
            cs = cands[start:start + len(rs)]
            start += len(rs)
            for i in range(len(rs)):
                for j in range(i + 1 if single else 0, len(rs)):
                    if i != j:
                        seqs.append(self.pair(s, cs[i], cs[j]))
                        where.append((n, i, j))
        return seqs, where


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


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Padded tokens over real tokens, minus one, of ``batches`` (index lists into ``lengths``),
    each padded to its longest row."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return padded / real - 1.0 if real else 0.0


def _rel_rows(config, length: int) -> int:
    """Relative-embedding rows a sequence of ``length`` reaches, as counted by
    :func:`executed_flops`: min(2k, 2L − 1) (exact below the log buckets, an upper bound above)."""
    k = config.position_buckets if getattr(config, "position_buckets", -1) > 0 else config.max_position_embeddings
    return min(2 * k, 2 * length - 1)


def executed_flops(config, lengths: Sequence[int], width: int, per_sequence: bool, rows: int = 3) -> float:
    """Multiply-add FLOPs (×2) that :func:`~.encoder.encode_rows` runs on one batch: ``lengths``
    padded to ``width``; attention at each row's own length (``per_sequence``) or at ``width``.

    Per layer, on the T = b·W padded rows: projections 8·T·H², feed-forward 4·T·H·I; per
    sequence of attention length n: scores and values 4·n²·H, c2p and p2c 2·2·n·R·H with
    R = min(2k, 2n − 1) (:func:`_rel_rows`). The relative position projections are computed once
    per model (not counted). The last layer runs only at ``rows`` query rows of each sequence:
    keys and values 4·T·H², then per sequence 4·r·H² + 4·r·H·I + 4·r·n·H + 2·r·R·H + 2·n·R·H.

    Hand-worked (H = 32, I = 64, 2 layers, k = 256, one sequence of 10 tokens, width 10, r = 3):
    R = 19; layer 1: 8·10·32² + 4·10·32·64 + 4·10²·32 + 4·10·19·32 = 200,960; layer 2:
    4·10·32² + 4·3·32² + 4·3·32·64 + 4·3·10·32 + 2·3·19·32 + 2·10·19·32 = 97,472; in all 298,432.
    """
    h, i, n_layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    t = len(lengths) * width
    att = [width if not per_sequence else n for n in lengths]
    full = 8 * t * h * h + 4 * t * h * i + sum(4 * n * n * h + 4 * n * _rel_rows(config, n) * h for n in att)
    last = 4 * t * h * h + sum(4 * rows * h * h + 4 * rows * h * i + 4 * rows * n * h
                               + 2 * rows * _rel_rows(config, n) * h + 2 * n * _rel_rows(config, n) * h for n in att)
    return float((n_layers - 1) * full + last)


def deberta_forward_flops(config, batch: int, length: int) -> float:
    """Multiply-add FLOPs (×2) of one DeBERTa-v2 encoder forward on a (batch, length) block as
    transformers (and llm-blender) run it: every layer at every position, position projections
    included; the reference work that :func:`executed_flops` is compared with.

    Per layer: Q, K, V, output projections 4·2·L·H²; feed-forward 2·2·L·H·I; scores and values
    2·2·L²·H; disentangled c2p and p2c scores 2·2·L·(2k)·H against the 2k relative embeddings
    (k = position_buckets), whose key/query projections cost 2·2·(2k)·H² per sequence. The head
    and embeddings are negligible and left out.

    Hand-worked (H = 32, I = 64, 2 layers, k = 256, L = 10, batch 1): per layer
    8·10·32² + 4·10·32·64 + 4·10²·32 + 8·10·256·32 + 8·256·32² = 2,929,152; ×2 layers = 5,858,304.
    """
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    k = config.position_buckets if getattr(config, "position_buckets", -1) > 0 else config.max_position_embeddings
    per_layer = (8 * length * h * h + 4 * length * h * i + 4 * length * length * h
                 + 8 * length * k * h + 8 * k * h * h)
    return float(batch) * n * per_layer
