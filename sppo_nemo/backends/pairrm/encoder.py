"""PairRM's DeBERTa-v2 encoder run for inference, on transformers' weights, doing less work than
transformers' forward while computing the same function.

transformers' ``DebertaV2Model.forward`` (and llm-blender's copy of it) spends, per layer and per
sequence, on top of the matmuls every model needs:

- the position projections ``query_proj(rel)`` and ``key_proj(rel)`` of the 2k relative
  embeddings (k = position_buckets = 256): 8·k·H² FLOPs, 2.1 GFLOP a layer at H = 1024, 13% of a
  ~500-token sequence's work, though they do not depend on the input. Here they are computed once
  per model and weights version (:class:`PositionCache`), already divided by the score scale;
- about fifteen full passes over B×heads×L×L tensors (scaling, two gathers, a transposed add,
  a boolean mask, masked_fill, softmax, copies). Here: two gathers written in place, one add,
  one fused ``baddbmm`` for the content scores, softmax, the value matmul;
- a padded B×heads×L×L attention block for a batch (the padding's queries and keys included),
  which stops fitting in the CPU's last-level cache beyond batch 1 (15.6 MB a sequence at
  L ≈ 494, against last-level caches of tens of MB). On a CPU (``per_sequence``) the matmuls run on all the batch's
  rows together but attention runs one sequence at a time at its own length; on a GPU
  (``padded``) attention runs on the padded batch with the padding's keys masked.
- on a CPU, a batch's matmuls over more than ``CHUNK_TOKENS`` padded tokens: the feed-forward's
  intermediate (tokens × 4096 floats, 162 MB at batch 20 of ~496-token sequences) then no longer
  fits the last-level cache and each pass over it goes to memory, so large batches lose to batch 1
  (benchmarks/README.md). In ``per_sequence`` mode a larger batch is encoded in consecutive chunks of
  sequences of at most ``CHUNK_TOKENS`` padded tokens each (sequences are independent, so the
  result is the same), and a batch costs what its chunks cost: batching never loses to batch 1.
- the whole last layer for every token, while PairRM reads three positions of it. Here the last
  layer's queries, attention, output projection and feed-forward run only at the rows asked for.

Results equal transformers' forward up to float rounding (tests/unit/test_pairrm_speed_modes.py
compares them; tests/integration/test_pairrm_equivalence.py compares with llm-blender).
Configurations it does not cover (a convolution layer, an embedding projection, absolute position
embeddings, ``z_steps``, no relative attention) run transformers' forward (:func:`supported`).
"""

from __future__ import annotations

from typing import Any, Sequence

MODES = ("per_sequence", "padded")
# Padded tokens a CPU (per_sequence) forward computes at once: about four ~500-token sequences,
# whose feed-forward intermediate (2048 × 4096 fp32 = 32 MB) stays within a server CPU's last-level cache.
CHUNK_TOKENS = 2048


def supported(deberta: Any) -> bool:
    """True when :func:`encode_rows` covers this ``DebertaV2Model``'s configuration."""
    c = deberta.config
    return (getattr(c, "relative_attention", False) and getattr(c, "conv_kernel_size", 0) == 0
            and not getattr(c, "position_biased_input", True) and deberta.embeddings.embed_proj is None
            and getattr(deberta, "z_steps", 0) <= 1 and set(c.pos_att_type or []) <= {"c2p", "p2c"})


def _bucket_index(length: int, deberta: Any, device):
    """The gather indices of a sequence of ``length`` tokens: (c2p_idx, c2p_lo, c2p_hi, p2c_idx,
    p2c_lo, p2c_hi). c2p(i − j) and p2c(j − i), the relative-embedding rows transformers'
    ``build_relative_position`` / ``make_log_bucket_position`` and clamps give to the pair (i, j),
    depend only on i − j, so they are computed on the 2L−1 offsets and spread; [lo, hi] is the
    range of rows this length reaches, and the indices count from lo. ``c2p_idx[i, j]`` indexes
    row i of q·Krᵀ; ``p2c_idx[i, j] = j·R + p2c(j − i)`` indexes the flattened k·Qrᵀ (R = its
    width), so that one gather gives the transposed p2c term directly."""
    import torch
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    att = deberta.encoder.layer[0].attention.self
    span = att.pos_ebd_size
    rel = torch.arange(-(length - 1), length, device=device)
    if att.position_buckets > 0 and att.max_relative_positions > 0:
        rel = make_log_bucket_position(rel, att.position_buckets, att.max_relative_positions).to(torch.long)
    c2p = torch.clamp(rel + span, 0, 2 * span - 1)  # at offset i − j + L − 1
    p2c = torch.clamp(-rel + span, 0, 2 * span - 1)  # at offset j − i + L − 1 (p2c(a − b) for a = j, b = i)
    i = torch.arange(length, device=device)
    diff = i[:, None] - i[None, :] + (length - 1)
    c_lo, c_hi = int(c2p.min()), int(c2p.max())
    p_lo, p_hi = int(p2c.min()), int(p2c.max())
    c2p_idx = (c2p - c_lo)[diff]
    p2c_idx = i[None, :] * (p_hi - p_lo + 1) + (p2c - p_lo)[diff.T]
    return c2p_idx, c_lo, c_hi, p2c_idx, p_lo, p_hi


class PositionCache:
    """Per layer, the relative position keys and (pre-scaled) queries, heads×2span×d; rebuilt when
    any weight they come from changes (its storage, in-place version, dtype or device)."""

    def __init__(self):
        self._key = None
        self.layers: list[tuple[Any, Any]] = []

    @staticmethod
    def _weights(deberta):
        enc = deberta.encoder
        ws = [enc.rel_embeddings.weight]
        if hasattr(enc, "LayerNorm"):
            ws += [enc.LayerNorm.weight, enc.LayerNorm.bias]
        for layer in enc.layer:
            a = layer.attention.self
            for name in ("query_proj", "key_proj", "pos_key_proj", "pos_query_proj"):
                m = getattr(a, name, None)
                if m is not None:
                    ws += [m.weight] + ([m.bias] if m.bias is not None else [])
        return ws

    def get(self, deberta) -> list[tuple[Any, Any]]:
        import torch

        ws = self._weights(deberta)
        key = tuple((w.data_ptr(), w._version, w.dtype, w.device) for w in ws)
        if key != self._key:
            with torch.no_grad():  # plain tensors, usable inside and outside inference_mode
                self.layers = [self._build(deberta, layer) for layer in deberta.encoder.layer]
            self._key = key
        return self.layers

    @staticmethod
    def _build(deberta, layer):
        a = layer.attention.self
        span = a.pos_ebd_size
        rel = deberta.encoder.get_rel_embedding()[: 2 * span]
        heads = a.num_attention_heads
        scale = _scale(a)
        types = a.pos_att_type
        pk = pq = None
        if "c2p" in types:
            pk = (a.key_proj if a.share_att_key else a.pos_key_proj)(rel)
            pk = pk.view(2 * span, heads, -1).transpose(0, 1).contiguous()
        if "p2c" in types:
            pq = (a.query_proj if a.share_att_key else a.pos_query_proj)(rel) / scale
            pq = pq.view(2 * span, heads, -1).transpose(0, 1).contiguous()
        return pk, pq


def _scale(a) -> float:
    """transformers' score scale √(d · (1 + |pos_att_type|)), as a float of the same value."""
    import torch

    factor = 1 + ("c2p" in a.pos_att_type) + ("p2c" in a.pos_att_type)
    return float(torch.sqrt(torch.tensor(a.attention_head_size, dtype=torch.float) * factor))


def _attend(q, k, v, pos, index, key_mask=None):
    """Disentangled attention for a block: q (b, h, Lq, d) already divided by the scale, k and v
    (b, h, L, d); ``index`` the :func:`_bucket_index` tuple with its two index matrices cut to
    the query rows, (Lq, L) or (b, Lq, L); ``key_mask`` (b, L) bool, True for real keys, or None.
    Returns (b, h, Lq, d).

    scores[i, j] = q_i·k_j + q_i·Kr[c2p(i − j)] + k_j·Qr[p2c(j − i)], the sum transformers
    forms (its c2p and p2c gathers), each gather written once, over only the relative positions
    this length reaches."""
    import torch

    pk, pq = pos
    c2p_idx, c_lo, c_hi, p2c_idx, p_lo, p_hi = index
    b, h, lq, d = q.shape
    n = k.shape[2]
    scores = torch.empty((b, h, lq, n), dtype=q.dtype, device=q.device)
    if pk is None and pq is None:
        scores.zero_()
    if pk is not None:  # content → position
        c2p = torch.matmul(q, pk[:, c_lo:c_hi + 1].transpose(-1, -2))  # (b, h, Lq, R)
        torch.gather(c2p, -1, c2p_idx.unsqueeze(-3).expand(b, h, lq, n), out=scores)
    if pq is not None:  # position → content, from the flattened (b, h, L·R) k·Qrᵀ
        p2c = torch.matmul(k, pq[:, p_lo:p_hi + 1].transpose(-1, -2)).view(b, h, -1)
        flat = p2c_idx.reshape(*p2c_idx.shape[:-2], 1, lq * n).expand(b, h, lq * n)
        got = torch.gather(p2c, -1, flat).view(b, h, lq, n)
        scores = scores.add_(got) if pk is not None else got
    scores.view(b * h, lq, n).baddbmm_(q.reshape(b * h, lq, d), k.reshape(b * h, n, d).transpose(1, 2))
    if key_mask is not None:
        scores.masked_fill_(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _heads(x, heads):
    """(b, L, H) → (b, heads, L, d), contiguous (the attention matmuls read it many times)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2).contiguous()


def _rows(index, rows):
    """A :func:`_bucket_index` tuple cut to query ``rows`` ((r,) or (b, r) positions)."""
    c2p_idx, c_lo, c_hi, p2c_idx, p_lo, p_hi = index
    return c2p_idx[rows], c_lo, c_hi, p2c_idx[rows], p_lo, p_hi


def encode_rows(deberta: Any, input_ids, lengths: Sequence[int], rows, mode: str = "per_sequence"):
    """Last hidden states of ``deberta`` at ``rows`` (b, r) positions of each sequence: (b, r, H).

    ``input_ids`` (b, W) right-padded, ``lengths`` each row's real length (≤ W). ``mode``:
    ``per_sequence`` (attention one sequence at a time at its own length; the CPU's) or
    ``padded`` (attention on the padded block with the padding's keys masked; a GPU's)."""
    import torch

    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; use one of {MODES}")
    lengths = [int(n) for n in lengths]
    if mode == "per_sequence" and len(lengths) > 1 and len(lengths) * input_ids.shape[1] > CHUNK_TOKENS:
        chunks = _chunks(lengths, CHUNK_TOKENS)
        if len(chunks) > 1:
            rows = torch.as_tensor(rows, device=input_ids.device)
            return torch.cat([encode_rows(deberta, input_ids[lo:hi, :max(lengths[lo:hi])], lengths[lo:hi],
                                          rows[lo:hi], mode) for lo, hi in chunks])
    emb, enc = deberta.embeddings, deberta.encoder
    b, width = input_ids.shape
    device = input_ids.device
    x = emb.word_embeddings(input_ids)
    if emb.token_type_embeddings is not None:
        x = x + emb.token_type_embeddings(torch.zeros_like(input_ids))
    x = emb.LayerNorm(x)
    real = torch.arange(width, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    x = x * real[..., None].to(x.dtype)  # transformers zeroes the padding's embeddings
    positions = _cache(deberta).get(deberta)
    heads = enc.layer[0].attention.self.num_attention_heads
    rows = torch.as_tensor(rows, device=device)
    sizes = sorted(set(lengths)) if mode == "per_sequence" else [width]
    indices = {n: _bucket_index(n, deberta, device) for n in sizes}
    last = len(enc.layer) - 1
    for li, layer in enumerate(enc.layer):
        a = layer.attention.self
        xq = torch.gather(x, 1, rows[..., None].expand(b, rows.shape[1], x.shape[-1])) if li == last else x
        q = _heads(a.query_proj(xq) / _scale(a), heads)
        k = _heads(a.key_proj(x), heads)
        v = _heads(a.value_proj(x), heads)
        if mode == "per_sequence":
            ctx = torch.zeros_like(q) if min(lengths) < width else torch.empty_like(q)
            for s, n in enumerate(lengths):
                index = indices[n]
                qs = q[s:s + 1] if li == last else q[s:s + 1, :, :n]
                if li == last:
                    index = _rows(index, rows[s])
                ctx[s:s + 1, :, :qs.shape[2]] = _attend(qs, k[s:s + 1, :, :n], v[s:s + 1, :, :n], positions[li],
                                                        index)
        else:
            index = _rows(indices[width], rows) if li == last else indices[width]
            ctx = _attend(q, k, v, positions[li], index, real)
        ctx = ctx.transpose(1, 2).reshape(b, ctx.shape[2], -1)
        attn = layer.attention.output(ctx, xq)
        x = layer.output(layer.intermediate(attn), attn)
    return x


def _chunks(lengths: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive [lo, hi) ranges of ``lengths`` whose count × longest stays within ``budget``
    padded tokens (a sequence longer than the budget alone). Hand-worked: lengths [500, 490, 480,
    470, 300], budget 2048 → [(0, 4), (4, 5)] (4 × 500 = 2000; 5 × 500 would be 2500)."""
    out: list[tuple[int, int]] = []
    lo, longest = 0, 0
    for i, n in enumerate(lengths):
        if i > lo and max(longest, n) * (i - lo + 1) > budget:
            out.append((lo, i))
            lo, longest = i, 0
        longest = max(longest, n)
    out.append((lo, len(lengths)))
    return out


def _cache(deberta) -> PositionCache:
    """The position cache of this encoder (kept on the module, so it goes away with it)."""
    cache = getattr(deberta, "_sppo_position_cache", None)
    if cache is None:
        cache = PositionCache()
        object.__setattr__(deberta, "_sppo_position_cache", cache)
    return cache
