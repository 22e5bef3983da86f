"""HF ⇄ Megatron-core weight conversion (``sppo_nemo.backends.megatron.convert`` and ``.arch``), in plain torch.

What is tested, on tiny random HF models built in-process (no megatron import, no hub):

- round trip: HF → Megatron → HF is byte-identical for Llama (GQA, untied), Qwen2 (tied, q/k/v
  biases), Qwen3 (q/k norms, head_dim ≠ hidden/heads), Mistral and GPT-2, with exactly the keys
  ``save_pretrained`` writes;
- layouts, checked by hand: the per-query-group fused ``linear_qkv`` (GQA and GPT-2), the gated
  ``linear_fc1`` = [gate; up], GPT-2's transposed Conv1D weights, the name inventory;
- tensor-parallel ``shard``/``unshard``: inverse of each other for every parameter at TP 1/2/4,
  zero-padded vocabulary shards, [gate_r; up_r] fc1 shards, whole query groups per rank, Qwen3's
  q/k norms whole on every rank;
- ``te_name``/``local_name``/``tp_split_dim`` on local and Transformer Engine names;
- ``arch_from_hf_config``: fields read, and every refusal (unsupported type, scaled RoPE, sliding
  windows unless accepted, GPT-2 variants) with its message; the window read per family
  (``Arch.sliding_window``) and ``Arch.window_problem``;
- ``Arch.parallel_errors`` and ``padded_vocab``, hand-worked;
- (slow) ``hub.SMOLLM2_CONFIG`` agrees with the real converted SmolLM2 ``config.json``.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from sppo_nemo.backends.megatron.arch import Arch, UnsupportedModel, arch_from_hf_config
from sppo_nemo.backends.megatron.convert import (hf_tensor_for, hf_to_megatron, local_name, megatron_names,
                                                 megatron_to_hf, shard, te_name, tp_split_dim, unshard)

pytestmark = pytest.mark.unit

HIDDEN, HEADS, KV_HEADS, LAYERS, FFN, VOCAB = 32, 4, 2, 2, 64, 100  # VOCAB: not a multiple of 8
HEAD_DIM = HIDDEN // HEADS  # 8
QWEN3_HEAD_DIM = 16  # ≠ HIDDEN // HEADS: q/k/v are 4·16 / 2·16 wide against a hidden size of 32


# -------------------------------------------------------------------------------- tiny models

def _llama(kv_heads: int = KV_HEADS):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=kv_heads,
                                        num_hidden_layers=LAYERS, intermediate_size=FFN, vocab_size=VOCAB,
                                        max_position_embeddings=64, tie_word_embeddings=False))


def _qwen2():
    torch.manual_seed(1)
    return Qwen2ForCausalLM(Qwen2Config(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                                        num_hidden_layers=LAYERS, intermediate_size=FFN, vocab_size=VOCAB,
                                        max_position_embeddings=64, tie_word_embeddings=True))


def _qwen3():
    torch.manual_seed(4)
    model = Qwen3ForCausalLM(Qwen3Config(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                                         head_dim=QWEN3_HEAD_DIM, num_hidden_layers=LAYERS, intermediate_size=FFN,
                                         vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=False))
    with torch.no_grad():  # the norms start at ones: random, so that swapping q and k, or layers, shows
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.normal_()
            layer.self_attn.k_norm.weight.normal_()
    return model


def _mistral():
    torch.manual_seed(2)
    return MistralForCausalLM(MistralConfig(hidden_size=HIDDEN, num_attention_heads=HEADS,
                                            num_key_value_heads=KV_HEADS, num_hidden_layers=LAYERS,
                                            intermediate_size=FFN, vocab_size=VOCAB, max_position_embeddings=64,
                                            sliding_window=None, tie_word_embeddings=False))


def _gpt2():
    torch.manual_seed(3)
    return GPT2LMHeadModel(GPT2Config(n_embd=HIDDEN, n_head=HEADS, n_layer=LAYERS, vocab_size=VOCAB, n_positions=64,
                                      bos_token_id=0, eos_token_id=0))


MODELS = {"llama": _llama, "qwen2": _qwen2, "qwen3": _qwen3, "mistral": _mistral, "gpt2": _gpt2,
          "llama-mha": lambda: _llama(kv_heads=HEADS)}
_CACHE: dict = {}


def built(key: str):
    """(HF state dict, Arch) of a tiny model, built once per test session."""
    if key not in _CACHE:
        model = MODELS[key]()
        _CACHE[key] = ({k: v.detach() for k, v in model.state_dict().items()},
                       arch_from_hf_config(model.config.to_dict()))
    return _CACHE[key]


def saved_keys(sd: dict, arch: Arch) -> set[str]:
    """The keys save_pretrained writes: the state dict minus the tied lm_head (these models have
    no non-persistent buffers in their state dicts; asserted below)."""
    return {k for k in sd if not (arch.tied and k == "lm_head.weight")}


# -------------------------------------------------------------------------------- 1. round trip

@pytest.mark.parametrize("key", ["llama", "qwen2", "qwen3", "mistral", "gpt2"])
def test_round_trip_is_byte_identical(key):
    sd, arch = built(key)
    assert not any(k.endswith((".attn.bias", ".attn.masked_bias", "inv_freq")) for k in sd), sorted(sd)
    mg = hf_to_megatron(sd, arch)
    assert list(mg) == megatron_names(arch)
    back = megatron_to_hf(mg, arch)
    assert set(back) == saved_keys(sd, arch)
    for k, v in back.items():
        assert v.dtype == sd[k].dtype and v.shape == sd[k].shape, k
        assert torch.equal(v, sd[k]), k
        assert v.is_contiguous() and v.data_ptr() != sd[k].data_ptr(), k  # copies, not views


def test_arch_fields_read_from_the_configs():
    _, llama = built("llama")
    assert (llama.family, llama.model_type, llama.num_layers, llama.hidden_size) == ("llama", "llama", 2, 32)
    assert (llama.num_attention_heads, llama.num_query_groups, llama.kv_channels) == (4, 2, 8)
    assert (llama.ffn_hidden_size, llama.vocab_size, llama.tied, llama.qkv_bias) == (64, 100, False, False)
    assert (llama.gated, llama.normalization, llama.position_embedding, llama.linear_bias) == (
        True, "RMSNorm", "rope", False)
    assert llama.rotary_base == 10000.0
    assert (llama.qk_norm, llama.sliding_window) == (False, None)
    _, qwen = built("qwen2")
    assert (qwen.tied, qwen.qkv_bias, qwen.num_query_groups, qwen.qk_norm) == (True, True, 2, False)
    _, qwen3 = built("qwen3")
    assert (qwen3.family, qwen3.model_type, qwen3.qk_norm, qwen3.qkv_bias, qwen3.tied) == (
        "llama", "qwen3", True, False, False)
    assert (qwen3.num_attention_heads, qwen3.num_query_groups, qwen3.kv_channels, qwen3.hidden_size) == (4, 2, 16, 32)
    assert (qwen3.norm_eps, qwen3.sliding_window) == (1e-6, None)
    assert Arch(**qwen3.to_dict()) == qwen3
    _, gpt2 = built("gpt2")
    assert (gpt2.family, gpt2.num_query_groups, gpt2.kv_channels, gpt2.ffn_hidden_size) == ("gpt2", 4, 8, 128)
    assert (gpt2.tied, gpt2.qkv_bias, gpt2.max_position_embeddings) == (True, True, 64)
    assert (gpt2.gated, gpt2.normalization, gpt2.position_embedding, gpt2.linear_bias) == (
        False, "LayerNorm", "learned_absolute", True)
    assert Arch(**gpt2.to_dict()) == gpt2


def test_megatron_names_inventory():
    # per layer: 2 norms, qkv, proj, fc1, fc2 (+ qkv bias for Qwen2, + 5 biases and GPT-2's qkv bias)
    assert len(megatron_names(built("llama")[1])) == 1 + 2 * 6 + 1 + 1  # + output_layer (untied)
    assert len(megatron_names(built("qwen2")[1])) == 1 + 2 * 7 + 1  # tied: no output_layer
    qwen3 = megatron_names(built("qwen3")[1])
    assert len(qwen3) == 1 + 2 * 8 + 1 + 1  # + q_layernorm, k_layernorm per layer; untied
    assert "decoder.layers.1.self_attention.q_layernorm.weight" in qwen3
    assert not any("layernorm" in n and "self_attention" in n for n in megatron_names(built("llama")[1]))
    gpt2 = megatron_names(built("gpt2")[1])
    assert len(gpt2) == 2 + 2 * 12 + 2
    assert "embedding.position_embeddings.weight" in gpt2 and "output_layer.weight" not in gpt2
    assert "decoder.layers.1.mlp.linear_fc2.bias" in gpt2 and "decoder.final_layernorm.bias" in gpt2
    assert "embedding.position_embeddings.weight" not in megatron_names(built("llama")[1])


# -------------------------------------------------------------------------------- 2. layouts

def _rows(t: torch.Tensor, start: int, n: int = HEAD_DIM) -> torch.Tensor:
    return t[start:start + n]


def test_gqa_qkv_layout_by_hand():
    """4 heads in 2 query groups, head dim 8: group 0 = [q0; q1; k0; v0], group 1 = [q2; q3; k1; v1]."""
    _, arch = built("llama")
    d = HEAD_DIM
    q = torch.arange(HEADS * d * HIDDEN, dtype=torch.float32).reshape(HEADS * d, HIDDEN)
    k = 10_000 + torch.arange(KV_HEADS * d * HIDDEN, dtype=torch.float32).reshape(KV_HEADS * d, HIDDEN)
    v = 20_000 + torch.arange(KV_HEADS * d * HIDDEN, dtype=torch.float32).reshape(KV_HEADS * d, HIDDEN)
    hf = {"model.layers.0.self_attn.q_proj.weight": q, "model.layers.0.self_attn.k_proj.weight": k,
          "model.layers.0.self_attn.v_proj.weight": v}
    qkv = hf_tensor_for("decoder.layers.0.self_attention.linear_qkv.weight", hf.__getitem__, arch)
    assert qkv.shape == ((HEADS + 2 * KV_HEADS) * d, HIDDEN) == (64, 32)
    expected = [q[0:8], q[8:16], k[0:8], v[0:8],  # group 0
                q[16:24], q[24:32], k[8:16], v[8:16]]  # group 1
    for i, block in enumerate(expected):
        assert torch.equal(_rows(qkv, i * d), block), f"rows {i * d}:{i * d + d}"
    assert qkv[0, 0] == 0 and qkv[16, 0] == 10_000 and qkv[24, 0] == 20_000 and qkv[32, 0] == 16 * HIDDEN


def test_qkv_bias_layout_and_real_model_slices():
    sd, arch = built("qwen2")
    mg = hf_to_megatron(sd, arch)
    p = "model.layers.1.self_attn."
    bias = mg["decoder.layers.1.self_attention.linear_qkv.bias"]
    weight = mg["decoder.layers.1.self_attention.linear_qkv.weight"]
    assert bias.shape == (64,)
    d = HEAD_DIM
    for kind, t in (("bias", bias), ("weight", weight)):
        q, k, v = (sd[f"{p}{x}_proj.{kind}"] for x in "qkv")
        assert torch.equal(t[0:16], q[0:16]) and torch.equal(t[16:24], k[0:d]) and torch.equal(t[24:32], v[0:d])
        assert torch.equal(t[32:48], q[16:32]) and torch.equal(t[48:56], k[d:2 * d]) and torch.equal(t[56:64], v[d:])


def test_qwen3_qk_norms_and_head_dim_by_hand():
    """q_norm/k_norm ([head_dim]) are q_layernorm/k_layernorm as they are; with head_dim 16 against a
    hidden size of 32 the fused qkv is (4 + 2·2)·16 rows and the output projection 4·16 columns."""
    sd, arch = built("qwen3")
    mg = hf_to_megatron(sd, arch)
    d = QWEN3_HEAD_DIM
    for i in range(LAYERS):
        m, h = f"decoder.layers.{i}.self_attention.", f"model.layers.{i}.self_attn."
        for x in "qk":
            assert mg[f"{m}{x}_layernorm.weight"].shape == (d,)
            assert torch.equal(mg[f"{m}{x}_layernorm.weight"], sd[f"{h}{x}_norm.weight"]), (i, x)
        assert not torch.equal(mg[m + "q_layernorm.weight"], mg[m + "k_layernorm.weight"])
        assert mg[m + "linear_qkv.weight"].shape == ((HEADS + 2 * KV_HEADS) * d, HIDDEN) == (128, 32)
        assert mg[m + "linear_proj.weight"].shape == (HIDDEN, HEADS * d) == (32, 64)
        qkv, q, k, v = mg[m + "linear_qkv.weight"], *(sd[f"{h}{x}_proj.weight"] for x in "qkv")
        assert torch.equal(qkv[:2 * d], q[:2 * d]) and torch.equal(qkv[2 * d:3 * d], k[:d])  # group 0
        assert torch.equal(qkv[3 * d:4 * d], v[:d]) and torch.equal(qkv[4 * d:6 * d], q[2 * d:])  # group 1
    assert not any(k.endswith("_proj.bias") for k in sd)  # no q/k/v bias, unlike Qwen2


def test_gated_fc1_is_gate_then_up_and_renames():
    sd, arch = built("llama")
    mg = hf_to_megatron(sd, arch)
    fc1 = mg["decoder.layers.1.mlp.linear_fc1.weight"]
    assert fc1.shape == (2 * FFN, HIDDEN)
    assert torch.equal(fc1[:FFN], sd["model.layers.1.mlp.gate_proj.weight"])
    assert torch.equal(fc1[FFN:], sd["model.layers.1.mlp.up_proj.weight"])
    for mname, hname in [("decoder.layers.1.mlp.linear_fc2.weight", "model.layers.1.mlp.down_proj.weight"),
                         ("decoder.layers.1.self_attention.linear_proj.weight", "model.layers.1.self_attn.o_proj.weight"),
                         ("decoder.layers.1.input_layernorm.weight", "model.layers.1.input_layernorm.weight"),
                         ("decoder.layers.1.pre_mlp_layernorm.weight", "model.layers.1.post_attention_layernorm.weight"),
                         ("decoder.final_layernorm.weight", "model.norm.weight"),
                         ("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
                         ("output_layer.weight", "lm_head.weight")]:
        assert torch.equal(mg[mname], sd[hname]), mname


def test_gpt2_conv1d_weights_are_transposed_and_qkv_interleaved_per_head():
    sd, arch = built("gpt2")
    mg = hf_to_megatron(sd, arch)
    p, m = "transformer.h.0.", "decoder.layers.0."
    assert torch.equal(mg[m + "self_attention.linear_proj.weight"], sd[p + "attn.c_proj.weight"].T)
    assert torch.equal(mg[m + "mlp.linear_fc1.weight"], sd[p + "mlp.c_fc.weight"].T)
    assert mg[m + "mlp.linear_fc1.weight"].shape == (4 * HIDDEN, HIDDEN)
    assert torch.equal(mg[m + "mlp.linear_fc2.weight"], sd[p + "mlp.c_proj.weight"].T)
    for mname, hname in [("self_attention.linear_proj", "attn.c_proj"), ("mlp.linear_fc1", "mlp.c_fc"),
                         ("mlp.linear_fc2", "mlp.c_proj")]:
        assert torch.equal(mg[f"{m}{mname}.bias"], sd[f"{p}{hname}.bias"]), mname
    for kind in ("weight", "bias"):
        assert torch.equal(mg[m + f"input_layernorm.{kind}"], sd[p + f"ln_1.{kind}"])
        assert torch.equal(mg[m + f"pre_mlp_layernorm.{kind}"], sd[p + f"ln_2.{kind}"])
        assert torch.equal(mg[f"decoder.final_layernorm.{kind}"], sd[f"transformer.ln_f.{kind}"])
    assert torch.equal(mg["embedding.position_embeddings.weight"], sd["transformer.wpe.weight"])
    # c_attn (in, 3·hidden) with columns [q | k | v]; Megatron: per head h, [q_h; k_h; v_h] (groups = heads)
    c_attn, qkv, d = sd[p + "attn.c_attn.weight"], mg[m + "self_attention.linear_qkv.weight"], HEAD_DIM
    c_bias, qkv_b = sd[p + "attn.c_attn.bias"], mg[m + "self_attention.linear_qkv.bias"]
    for h in range(HEADS):
        for j, part in enumerate("qkv"):
            rows = slice((3 * h + j) * d, (3 * h + j + 1) * d)
            cols = slice(j * HIDDEN + h * d, j * HIDDEN + (h + 1) * d)
            assert torch.equal(qkv[rows], c_attn[:, cols].T), (h, part)
            assert torch.equal(qkv_b[rows], c_bias[cols]), (h, part)


def test_hf_tensor_for_reads_only_what_it_needs():
    sd, arch = built("llama")
    read = []

    def get(k):
        read.append(k)
        return sd[k]

    hf_tensor_for("decoder.layers.1.self_attention.linear_qkv.weight", get, arch)
    assert read == [f"model.layers.1.self_attn.{x}_proj.weight" for x in "qkv"]
    read.clear()
    hf_tensor_for("decoder.layers.0.mlp.linear_fc1.weight", get, arch)
    assert read == ["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"]
    with pytest.raises(KeyError, match="no HF source"):
        hf_tensor_for("decoder.layers.0.mlp.linear_fc3.weight", get, arch)


def test_tied_conversion_needs_no_lm_head():
    sd, arch = built("qwen2")
    without = {k: v for k, v in sd.items() if k != "lm_head.weight"}  # as loaded from a safetensors file
    assert "output_layer.weight" not in hf_to_megatron(without, arch)
    assert "lm_head.weight" not in megatron_to_hf(hf_to_megatron(without, arch), arch)


# -------------------------------------------------------------------------------- 3. tensor parallel

# 2 query groups allow TP 1 and 2; TP 4 needs the 4-kv-head Llama or GPT-2 (4 heads = 4 groups)
@pytest.mark.parametrize("key, tp", [(k, tp) for k in ("llama", "qwen2", "qwen3", "mistral", "gpt2", "llama-mha")
                                     for tp in (1, 2, 4) if tp < 4 or k in ("gpt2", "llama-mha")])
def test_shard_unshard_round_trip(key, tp):
    sd, arch = built(key)
    assert arch.parallel_errors(tp, 1) == []
    mg = hf_to_megatron(sd, arch)
    padded = arch.padded_vocab(tp, 128)
    for name in megatron_names(arch):
        full = mg[name]
        parts = [shard(name, full, arch, r, tp, padded) for r in range(tp)]
        dim = tp_split_dim(name)
        if name.endswith(("word_embeddings.weight", "output_layer.weight")):
            assert all(p.shape == (padded // tp, HIDDEN) for p in parts), name
            assert torch.count_nonzero(torch.cat(parts)[VOCAB:]) == 0, name  # zero rows, none of the real
            assert torch.equal(torch.cat(parts)[:VOCAB], full), name
        elif dim is None or tp == 1:
            assert all(p is full for p in parts), name  # replicated
        else:
            assert all(p.shape[dim] * tp == full.shape[dim] for p in parts), name
        assert torch.equal(unshard(name, parts, arch), full), name
        assert torch.equal(unshard(te_name(name), parts, arch), full), name  # TE names work too


def test_qwen3_qk_norms_are_whole_on_every_tensor_parallel_rank():
    """Each rank normalises its own heads with the same [head_dim] weights: replicated, not split."""
    sd, arch = built("qwen3")
    mg = hf_to_megatron(sd, arch)
    for x in "qk":
        name = f"decoder.layers.0.self_attention.{x}_layernorm.weight"
        assert tp_split_dim(name) is None
        parts = [shard(name, mg[name], arch, r, 2, arch.padded_vocab(2, 128)) for r in range(2)]
        assert all(torch.equal(p, sd[f"model.layers.0.self_attn.{x}_norm.weight"]) for p in parts)
        assert torch.equal(unshard(name, parts, arch), mg[name])
    qkv = "decoder.layers.0.self_attention.linear_qkv.weight"  # one query group (2 heads of 16) a rank
    assert shard(qkv, mg[qkv], arch, 1, 2, 128).shape == ((2 + 2) * QWEN3_HEAD_DIM, HIDDEN)


def test_gqa_model_refuses_tp_beyond_its_groups():
    assert built("llama")[1].parallel_errors(4, 1) == [
        "2 key/value heads (query groups) are not divisible by tensor parallel 4"]


def test_padded_vocab_by_hand():
    _, arch = built("llama")  # vocab 100
    assert arch.padded_vocab(1) == 100 and arch.padded_vocab(3) == 102 and arch.padded_vocab(4, 8) == 128
    assert arch.padded_vocab(1, 128) == 128 and arch.padded_vocab(2, 128) == 256


def test_vocab_shards_by_hand():
    _, arch = built("llama")
    emb = torch.arange(1, VOCAB + 1, dtype=torch.float32)[:, None].expand(VOCAB, 3)
    name = "embedding.word_embeddings.weight"
    r0, r1 = (shard(name, emb, arch, r, 2, 256) for r in range(2))
    assert r0.shape == r1.shape == (128, 3)
    assert torch.equal(r0[:100], emb) and torch.count_nonzero(r0[100:]) == 0 and torch.count_nonzero(r1) == 0
    r0, r1 = (shard("output_layer.weight", emb, arch, r, 2, 102) for r in range(2))  # vocab padded to 102
    assert torch.equal(r0, emb[:51]) and torch.equal(r1[:49], emb[51:]) and torch.count_nonzero(r1[49:]) == 0
    assert torch.equal(unshard("output_layer.weight", [r0, r1], arch), emb)
    only = shard(name, emb, arch, 0, 1, 128)  # tp 1 is still padded
    assert only.shape == (128, 3) and torch.equal(unshard(name, [only], arch), emb)


def test_gated_fc1_shard_is_gate_chunk_then_up_chunk():
    sd, arch = built("llama")
    name = "decoder.layers.0.mlp.linear_fc1.weight"
    fc1 = hf_to_megatron(sd, arch)[name]
    gate, up = sd["model.layers.0.mlp.gate_proj.weight"], sd["model.layers.0.mlp.up_proj.weight"]
    half = FFN // 2
    for r in range(2):
        s = shard(name, fc1, arch, r, 2, 100)
        assert s.shape == (FFN, HIDDEN)
        assert torch.equal(s[:half], gate[r * half:(r + 1) * half]), r
        assert torch.equal(s[half:], up[r * half:(r + 1) * half]), r
        assert torch.equal(shard(te_name(name), fc1, arch, r, 2, 100), s)  # same under the TE name
    # GPT-2's fc1 is not gated: a plain contiguous slice
    sd2, gpt2 = built("gpt2")
    fc1_2 = hf_to_megatron(sd2, gpt2)[name]
    assert torch.equal(shard(name, fc1_2, gpt2, 1, 2, 100), fc1_2[64:])


def test_qkv_shard_holds_whole_query_groups():
    sd, arch = built("llama")
    mg = hf_to_megatron(sd, arch)
    name = "decoder.layers.0.self_attention.linear_qkv.weight"
    q, k, v = (sd[f"model.layers.0.self_attn.{x}_proj.weight"] for x in "qkv")
    r0, r1 = (shard(name, mg[name], arch, r, 2, 100) for r in range(2))
    assert torch.equal(r0, torch.cat([q[:16], k[:8], v[:8]]))  # group 0: heads 0,1 and kv head 0
    assert torch.equal(r1, torch.cat([q[16:], k[8:], v[8:]]))  # group 1: heads 2,3 and kv head 1
    proj = "decoder.layers.0.self_attention.linear_proj.weight"  # row-parallel: split over its input
    assert torch.equal(shard(proj, mg[proj], arch, 1, 2, 100), sd["model.layers.0.self_attn.o_proj.weight"][:, 16:])


# -------------------------------------------------------------------------------- 4. names

def test_te_name_and_local_name():
    p = "decoder.layers.3."
    pairs = {p + "input_layernorm.weight": p + "self_attention.linear_qkv.layer_norm_weight",
             p + "input_layernorm.bias": p + "self_attention.linear_qkv.layer_norm_bias",
             p + "pre_mlp_layernorm.weight": p + "mlp.linear_fc1.layer_norm_weight",
             p + "pre_mlp_layernorm.bias": p + "mlp.linear_fc1.layer_norm_bias"}
    for local, te in pairs.items():
        assert te_name(local) == te
        assert local_name(te) == local
        assert local_name(local) == local  # identity on local names
    unchanged = [p + "self_attention.q_layernorm.weight", p + "self_attention.k_layernorm.weight",
                 p + "self_attention.linear_qkv.weight", p + "self_attention.linear_qkv.bias",
                 p + "mlp.linear_fc1.weight", p + "mlp.linear_fc2.weight", p + "self_attention.linear_proj.weight",
                 "decoder.final_layernorm.weight", "decoder.final_layernorm.bias",
                 "embedding.word_embeddings.weight", "output_layer.weight"]
    for name in unchanged:
        assert te_name(name) == name and local_name(name) == name
    for arch in (built("gpt2")[1], built("llama")[1]):
        for name in megatron_names(arch):
            assert local_name(te_name(name)) == name


def test_tp_split_dim():
    p = "decoder.layers.0."
    expected = {"embedding.word_embeddings.weight": 0, "output_layer.weight": 0,
                "embedding.position_embeddings.weight": None, "decoder.final_layernorm.weight": None,
                p + "self_attention.linear_qkv.weight": 0, p + "self_attention.linear_qkv.bias": 0,
                p + "mlp.linear_fc1.weight": 0, p + "mlp.linear_fc1.bias": 0,
                p + "self_attention.linear_proj.weight": 1, p + "mlp.linear_fc2.weight": 1,
                p + "self_attention.linear_proj.bias": None, p + "mlp.linear_fc2.bias": None,
                p + "input_layernorm.weight": None, p + "pre_mlp_layernorm.bias": None,
                p + "self_attention.q_layernorm.weight": None, p + "self_attention.k_layernorm.weight": None}
    for name, dim in expected.items():
        assert tp_split_dim(name) == dim, name
        assert tp_split_dim(te_name(name)) == dim, te_name(name)
    for name in megatron_names(built("gpt2")[1]):
        assert tp_split_dim(te_name(name)) == tp_split_dim(name), name


# -------------------------------------------------------------------------------- 5. config refusals

def _llama_cfg(**kw) -> dict:
    cfg = LlamaConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                      num_hidden_layers=LAYERS, intermediate_size=FFN, vocab_size=VOCAB).to_dict()
    cfg.update(kw)
    return cfg


def test_unsupported_model_type():
    with pytest.raises(UnsupportedModel) as e:
        arch_from_hf_config({"model_type": "phi3", "hidden_size": 32})
    assert "'phi3'" in str(e.value) and "trainer.backend=torch" in str(e.value)
    assert isinstance(e.value, ValueError)
    with pytest.raises(UnsupportedModel, match="None"):
        arch_from_hf_config({})


def test_gemma_families_are_refused_naming_what_the_local_spec_lacks():
    with pytest.raises(UnsupportedModel) as e:
        arch_from_hf_config({"model_type": "gemma2", "hidden_size": 3584, "attn_logit_softcapping": 50.0})
    msg = str(e.value)
    assert "'gemma2'" in msg and "soft-capping" in msg and "(1 + w)" in msg and "trainer.backend=torch" in msg
    for mt in ("gemma", "gemma3"):
        with pytest.raises(UnsupportedModel, match="zero-centred RMSNorm"):
            arch_from_hf_config({"model_type": mt})


@pytest.mark.parametrize("rope", [
    # Llama 3.1 scaling with constants other than the ones megatron hard-codes (1, 4, 8192)
    {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 2.0,
                      "original_max_position_embeddings": 8192}},
    {"rope_scaling": {"type": "linear", "factor": 2.0}},  # transformers-4 legacy key
    {"rope_parameters": {"rope_theta": 10000.0, "rope_type": "yarn", "factor": 4.0}},  # transformers 5
])
def test_scaled_rope_is_refused(rope):
    cfg = {k: v for k, v in _llama_cfg().items() if k not in ("rope_scaling", "rope_parameters")}
    with pytest.raises(UnsupportedModel, match="rope scaling") as e:
        arch_from_hf_config({**cfg, **rope})
    assert "trainer.backend=torch" in str(e.value)


def test_rope_theta_both_styles():
    base = {k: v for k, v in _llama_cfg().items() if k not in ("rope_scaling", "rope_parameters", "rope_theta")}
    v5 = arch_from_hf_config({**base, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}})
    assert v5.rotary_base == 100000.0 and isinstance(v5.rotary_base, float)
    v4 = arch_from_hf_config({**base, "rope_theta": 500000, "rope_scaling": None})
    assert v4.rotary_base == 500000.0
    assert arch_from_hf_config(base).rotary_base == 10000.0


@pytest.mark.parametrize("cfg, reason", [
    ({"model_type": "mistral", "sliding_window": 4096},
     r"sliding_window 4096 \(only full attention; the megatron trainer accepts the window where "
     r"trainer.max_length ≤ 4096\)"),
    ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4096}, "sliding_window 4096"),
    ({"model_type": "qwen3", "use_sliding_window": True, "sliding_window": 4096}, "sliding_window 4096"),
    ({"model_type": "qwen3", "attention_bias": True}, "attention_bias"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
])
def test_llama_family_refusals(cfg, reason):
    with pytest.raises(UnsupportedModel, match=reason):
        arch_from_hf_config(_llama_cfg(**cfg))


def test_llama_family_accepts():
    assert arch_from_hf_config(_llama_cfg(model_type="mistral", sliding_window=None)).model_type == "mistral"
    assert arch_from_hf_config(_llama_cfg(model_type="qwen2", use_sliding_window=False,
                                          sliding_window=4096)).qkv_bias
    assert arch_from_hf_config(_llama_cfg(head_dim=16)).kv_channels == 16  # head_dim ≠ hidden / heads


def _qwen3_cfg(**kw) -> dict:
    cfg = Qwen3Config(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=16,
                      num_hidden_layers=LAYERS, intermediate_size=FFN, vocab_size=VOCAB, **kw).to_dict()
    return cfg


def test_qwen3_config_read():
    arch = arch_from_hf_config(_qwen3_cfg(rms_norm_eps=1e-5, tie_word_embeddings=True))
    assert (arch.model_type, arch.qk_norm, arch.qkv_bias, arch.kv_channels, arch.norm_eps, arch.tied) == (
        "qwen3", True, False, 16, 1e-5, True)
    assert arch.kv_channels * arch.num_attention_heads != arch.hidden_size
    with pytest.raises(UnsupportedModel, match="qwen3 checkpoint .* attention_bias"):
        arch_from_hf_config(_qwen3_cfg(attention_bias=True))


@pytest.mark.parametrize("cfg, window", [
    (_llama_cfg(model_type="mistral", sliding_window=4096), 4096),  # every layer
    (_llama_cfg(model_type="mistral", sliding_window=None), None),
    (_llama_cfg(model_type="qwen2", use_sliding_window=False, sliding_window=4096), None),
    (_llama_cfg(model_type="qwen2", use_sliding_window=True, sliding_window=4096), 4096),  # no layer_types: all
    # transformers writes layer_types: layers from max_window_layers up slide
    (Qwen2Config(num_hidden_layers=2, use_sliding_window=True, sliding_window=512,
                 max_window_layers=1).to_dict(), 512),
    (Qwen2Config(num_hidden_layers=2, use_sliding_window=True, sliding_window=512,
                 max_window_layers=2).to_dict(), None),
    (_qwen3_cfg(use_sliding_window=True, sliding_window=256, max_window_layers=0), 256),
    (_qwen3_cfg(use_sliding_window=True, sliding_window=256, layer_types=["full_attention"] * 2), None),
    (_qwen3_cfg(use_sliding_window=False, sliding_window=256), None),
    (_qwen3_cfg(), None),
], ids=["mistral", "mistral-none", "qwen2-off", "qwen2-no-layer-types", "qwen2-top-layer-slides",
        "qwen2-no-layer-slides", "qwen3-every-layer", "qwen3-layer-types-full", "qwen3-off", "qwen3-default"])
def test_sliding_window_is_read_into_the_arch_when_accepted(cfg, window):
    arch = arch_from_hf_config(cfg, accept_window=True)
    assert arch.sliding_window == window
    if window is None:
        assert arch_from_hf_config(cfg) == arch  # nothing to accept: the default reads the same
    else:
        with pytest.raises(UnsupportedModel, match=f"sliding_window {window} "):
            arch_from_hf_config(cfg)  # refused by default


def test_window_problem_is_none_while_every_sequence_fits_the_window():
    arch = arch_from_hf_config(_llama_cfg(model_type="mistral", sliding_window=4096), accept_window=True)
    assert arch.window_problem(1) is None and arch.window_problem(4096) is None  # i - j ≤ 4095 < 4096
    assert arch.window_problem(4097) == (
        "mistral attends through a sliding window, which megatron's layer spec does not apply: a window of 4096 "
        "tokens acts on sequences longer than 4096; set trainer.max_length ≤ 4096 or train with "
        "trainer.backend=torch")
    assert built("llama")[1].window_problem(10 ** 9) is None  # no window


def _gpt2_cfg(**kw) -> dict:
    cfg = GPT2Config(n_embd=HIDDEN, n_head=HEADS, n_layer=LAYERS, vocab_size=VOCAB, n_positions=64).to_dict()
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("cfg, reason", [
    ({"activation_function": "relu"}, "activation_function 'relu'"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn"),
    ({"scale_attn_weights": False}, "scale_attn_weights"),
])
def test_gpt2_refusals(cfg, reason):
    with pytest.raises(UnsupportedModel, match=reason):
        arch_from_hf_config(_gpt2_cfg(**cfg))


def test_gpt2_accepts():
    assert arch_from_hf_config(_gpt2_cfg(activation_function="gelu_pytorch_tanh")).family == "gpt2"
    assert arch_from_hf_config(_gpt2_cfg(n_inner=100)).ffn_hidden_size == 100


# -------------------------------------------------------------------------------- 6. parallel errors

def _arch(heads=9, groups=3, layers=30, ffn=1536) -> Arch:
    return Arch(family="llama", model_type="llama", num_layers=layers, hidden_size=576, num_attention_heads=heads,
                num_query_groups=groups, kv_channels=64, ffn_hidden_size=ffn, vocab_size=49152,
                max_position_embeddings=8192, norm_eps=1e-5, tied=True, qkv_bias=False)


def test_parallel_errors_by_hand():
    a = _arch()
    assert a.parallel_errors(1, 1) == []
    errs = a.parallel_errors(2, 1)
    assert len(errs) == 2
    assert "9 attention heads" in errs[0] and "tensor parallel 2" in errs[0]
    assert "3 key/value heads" in errs[1] and "tensor parallel 2" in errs[1]
    assert a.parallel_errors(3, 2) == []
    assert a.parallel_errors(3, 5) == [] and a.parallel_errors(1, 30) == []
    (pp,) = a.parallel_errors(1, 4)
    assert "30 layers" in pp and "pipeline parallel 4" in pp
    (ffn,) = _arch(ffn=1537).parallel_errors(3, 1)  # 1537 = 3·512 + 1, odd
    assert "MLP width 1537" in ffn and "tensor parallel 3" in ffn
    assert len(_arch(ffn=1537).parallel_errors(2, 4)) == 4  # all four reasons at once


# -------------------------------------------------------------------------------- 7. shipped SmolLM2

@pytest.mark.slow
def test_smollm2_config_matches_the_converted_checkpoint():
    from sppo_nemo.backends.hf import smollm2_checkpoint
    from sppo_nemo.formats.hub import SMOLLM2_CONFIG

    path = smollm2_checkpoint()
    assert path.name.startswith("smollm2-135m-instruct")
    real = json.loads((path / "config.json").read_text())
    for key, value in SMOLLM2_CONFIG.items():
        assert real.get(key) == value, f"{key}: recipe says {value!r}, config.json says {real.get(key)!r}"
    short, full = arch_from_hf_config(SMOLLM2_CONFIG), arch_from_hf_config(real)
    for tp in (1, 2, 3, 4, 6):
        for pp in (1, 2, 3, 4):
            assert short.parallel_errors(tp, pp) == full.parallel_errors(tp, pp), (tp, pp)


def test_untied_gpt2_keeps_its_own_output_head() -> None:
    """GPT-2 with tie_word_embeddings=false has an lm_head of its own: it must survive the round trip."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(5)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=100, n_positions=64,
                                       tie_word_embeddings=False))
    sd = model.state_dict()
    assert not torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"])
    arch = arch_from_hf_config(model.config.to_dict())
    assert arch.tied is False
    mg = hf_to_megatron(sd, arch)
    assert torch.equal(mg["output_layer.weight"], sd["lm_head.weight"])
    back = megatron_to_hf(mg, arch)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], v) for k, v in sd.items())


@pytest.mark.parametrize("style", ["v4", "v5"])
def test_llama31_rope_scaling_with_megatrons_constants_is_accepted(style):
    base = {k: v for k, v in _llama_cfg().items() if k not in ("rope_scaling", "rope_parameters", "rope_theta")}
    rope = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
    cfg = ({**base, "rope_theta": 500000.0, "rope_scaling": rope} if style == "v4"
           else {**base, "rope_parameters": {**rope, "rope_theta": 500000.0}})
    arch = arch_from_hf_config(cfg)
    assert arch.rope_scaling_factor == 32.0 and arch.rotary_base == 500000.0
    assert arch_from_hf_config(base).rope_scaling_factor is None
