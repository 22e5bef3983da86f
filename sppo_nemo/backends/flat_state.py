"""The training state in flat buffers, and weight gradients accumulated in place: the torch
trainer's memory layout. The arithmetic is unchanged; only where the bytes live changes.

What a CPU training step keeps, for SmolLM2-135M in fp32: parameters 0.5 GiB, gradients 0.5 GiB,
AdamW's two moments 1.0 GiB. Loaded and allocated tensor by tensor (272 of them, most 0.4–3.5 MB),
all of it comes from the heap, interleaved with the step's transient activations, and the heap's
high-water mark then sits well above what is live (about 0.45 GiB over the tracked tensors at
micro-batch 1). And every backward of the LM head allocates a fresh (V, d) weight gradient per
chunk of tokens, 113 MB each, which autograd holds until the tied input embedding adds its own
dense (V, d) gradient at the end of the backward.

- :func:`flatten` moves the parameters into one contiguous buffer and gives them gradients that
  are views of a second one, allocated once (zeroed between steps, never freed), so autograd
  accumulates into them in place; :func:`adamw_state` gives AdamW its moments as views of a third.
  Each buffer is one allocation above the mmap threshold: outside the heap, which is left with the
  transients alone.
- :func:`accumulate_in_place` makes the LM head's and the input embedding's backward add their
  weight gradient straight into ``weight.grad`` (``addmm_`` / ``index_add_``), as Megatron's
  gradient-accumulation fusion does for its linear layers: no (V, d) temporary, no autograd buffer
  for the tied weight.
  The torch trainer uses it in fp32 only (its docstring says why not under bf16 autocast).
- :meth:`FlatState.release` gives the parameters storage of their own again before saving.

Measured: ``benchmarks/bench_trainer_step.py`` (figures in benchmarks/README.md; the design in
docs/backends.md).
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_ALIGN = 16  # elements: every view starts on a 64-byte boundary (fp32), as vector kernels prefer


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


@dataclass
class FlatState:
    params: list[torch.nn.Parameter]  # the trainable parameters, each once (tied weights share one)
    data: torch.Tensor  # their values, one buffer
    grads: torch.Tensor  # their gradients, one buffer; p.grad is a view of it

    def zero_grad(self) -> None:
        """Zero the gradients in place (the views stay: never ``set_to_none``)."""
        self.grads.zero_()

    def release(self) -> None:
        """Give every parameter storage of its own and drop the gradients (before saving: a
        checkpoint writer may refuse tensors that share one storage)."""
        for p in self.params:
            p.grad = None
            p.data = p.data.clone()
        self.data = self.grads = torch.empty(0)


def _layout(params: list[torch.nn.Parameter]) -> tuple[list[int], int]:
    offsets, total = [], 0
    for p in params:
        offsets.append(total)
        total += _aligned(p.numel())
    return offsets, total


def flatten(model: torch.nn.Module) -> FlatState:
    """Move ``model``'s trainable parameters into one buffer and give them zeroed gradients in a
    second (module docstring). The values are copied exactly; parameters that do not require grad
    are left where they are. All trainable parameters must share one dtype and device."""
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() yields a tied weight once
    if not params:
        raise ValueError("flatten: the model has no trainable parameters")
    kinds = {(p.dtype, p.device) for p in params}
    if len(kinds) > 1:
        raise ValueError(f"flatten: trainable parameters of several dtypes/devices {sorted(map(str, kinds))}")
    dtype, device = kinds.pop()
    offsets, total = _layout(params)
    data = torch.zeros(total, dtype=dtype, device=device)
    grads = torch.zeros(total, dtype=dtype, device=device)
    with torch.no_grad():
        for p, o in zip(params, offsets):
            n = p.numel()
            data[o:o + n].copy_(p.reshape(-1))
            p.data = data[o:o + n].view(p.shape)
            p.grad = grads[o:o + n].view(p.shape)
    return FlatState(params, data, grads)


def adamw_state(opt: torch.optim.Optimizer, state: FlatState) -> torch.Tensor | None:
    """Give an AdamW over ``state``'s parameters its moments (``exp_avg``, ``exp_avg_sq``) as
    views of one zeroed buffer, in the keys and the initial values (step 0, zeros) its own lazy
    initialisation would create at the first step. Returns that buffer; None (nothing done) for
    another optimizer, amsgrad, or parameters outside ``state``."""
    if not isinstance(opt, torch.optim.Adam) or any(g.get("amsgrad") for g in opt.param_groups):
        return None  # AdamW subclasses Adam and shares its _init_group and state keys
    index = {id(p): i for i, p in enumerate(state.params)}
    params = [p for g in opt.param_groups for p in g["params"]]
    if any(id(p) not in index for p in params) or any(opt.state.get(p) for p in params):
        return None
    offsets, total = _layout(state.params)
    moments = torch.zeros(2 * total, dtype=state.data.dtype, device=state.data.device)
    for g in opt.param_groups:
        on_device = g.get("fused") or g.get("capturable")
        for p in g["params"]:
            o, n = offsets[index[id(p)]], p.numel()
            opt.state[p] = {
                "step": torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu"),
                "exp_avg": moments[o:o + n].view(p.shape),
                "exp_avg_sq": moments[total + o:total + o + n].view(p.shape),
            }
    return moments


# ----------------------------------------------------------- gradients accumulated in place


def _compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype a matrix product computes in here: autocast's, where it is on, else the weight's."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


def _add_into_grad(weight: torch.Tensor, update) -> None:
    """weight.grad += update(weight.grad) — ``update`` adds in place into the buffer it is given."""
    if weight.grad is None:
        weight.grad = torch.zeros_like(weight)
    update(weight.grad)


class _LinearInPlace(torch.autograd.Function):
    """y = x Wᵀ; backward returns dL/dx and adds dL/dW = gᵀx into W.grad in place."""

    @staticmethod
    def forward(ctx, x, weight):
        dt = _compute_dtype(x.device, weight.dtype)
        ctx.dt, ctx.x_dtype, ctx.weight = dt, x.dtype, weight
        ctx.save_for_backward(x)
        return F.linear(x.to(dt), weight.to(dt))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        w, dt = ctx.weight, ctx.dt
        g2, x2 = g.reshape(-1, g.shape[-1]).to(dt), x.reshape(-1, x.shape[-1]).to(dt)
        if w.requires_grad:
            if dt == w.dtype:
                _add_into_grad(w, lambda acc: acc.addmm_(g2.t(), x2))
            else:  # autocast: the product in its dtype (as autocast's own backward), then added in fp32
                _add_into_grad(w, lambda acc: acc.add_(g2.t().mm(x2)))
        grad_x = g2.mm(w.to(dt)).view(*x.shape[:-1], w.shape[1]).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        return grad_x, None


class _EmbeddingInPlace(torch.autograd.Function):
    """rows of W by ids; backward adds each output gradient into its row of W.grad (index_add_),
    skipping ``padding_idx`` as nn.Embedding does."""

    @staticmethod
    def forward(ctx, ids, weight, padding_idx):
        ctx.weight, ctx.padding_idx = weight, padding_idx
        ctx.save_for_backward(ids)
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, g):
        (ids,) = ctx.saved_tensors
        w = ctx.weight
        if w.requires_grad:
            flat_ids, rows = ids.reshape(-1), g.reshape(-1, g.shape[-1])
            if ctx.padding_idx is not None:
                keep = flat_ids != ctx.padding_idx
                flat_ids, rows = flat_ids[keep], rows[keep]
            _add_into_grad(w, lambda acc: acc.index_add_(0, flat_ids, rows.to(acc.dtype)))
        return None, None, None


def _linear_forward(self, x):
    return _LinearInPlace.apply(x, self.weight)


def _embedding_forward(self, ids):
    return _EmbeddingInPlace.apply(ids, self.weight, self.padding_idx)


def accumulate_in_place(model) -> list[str]:
    """Switch the LM head (a bias-free nn.Linear) and the input embedding (a plain nn.Embedding) of
    an HF causal LM to the in-place backward above; returns which were switched. Others are left as
    they are (their gradients still arrive through autograd, into the same ``.grad``)."""
    done = []
    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear and head.bias is None:
        head.forward = types.MethodType(_linear_forward, head)
        done.append("lm_head")
    emb = model.get_input_embeddings()
    if (type(emb) is torch.nn.Embedding and emb.max_norm is None and not emb.scale_grad_by_freq
            and not emb.sparse):
        emb.forward = types.MethodType(_embedding_forward, emb)
        done.append("embed_tokens")
    return done
