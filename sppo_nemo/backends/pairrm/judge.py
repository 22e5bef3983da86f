"""PairRM (Jiang et al., 2023; llm-blender), the paper's preference model, as a Judge.

For K responses of a prompt all K(K−1) ordered pairs are scored: C[i, j] = s(y_i, y_j | x),
C[i, i] = 0 (the network: :mod:`.model`; the sequences: :mod:`.inputs`). ``probability`` chooses
how M[i, j] = P(y_i ≻ y_j | x) is made from C: ``symmetric`` (default) or ``score_diff``, both
defined in :mod:`sppo_nemo.maths.preference`.

``pairs="single"`` (``judge.pairs: single``) is a speed/accuracy trade-off: each unordered pair
is scored once, in the order (i, j) with i < j, and C[j, i] = −C[i, j], so C is antisymmetric by
construction and the work is halved (K(K−1)/2 model calls a prompt). PairRM's position bias is
then not averaged out but folded into the result: ``symmetric`` gives M[i, j] = σ(C[i, j]) (the
one order's logit, no longer the mean of two), ``score_diff`` s_i = (2/K) Σ_j C[i, j]. Both still
give M + Mᵀ = 1 and a ½ diagonal. benchmarks/bench_pairrm.py prints its disagreement with both
orders.

Speed: one call scores all pairs of all its prompts together, batched by length
(:func:`~.inputs.make_batches`), under ``torch.inference_mode``, in bf16 on a GPU
(``dtype="auto"``) and fp32 on a CPU; on a CPU attention runs one sequence at a time inside a
batch (:mod:`.encoder`), so a batch costs what its sequences cost alone. ``judge.stats`` keeps
pairs (model calls: sequences scored), tokens, padded tokens, forward seconds and FLOPs.
With ``device="auto"`` and more than one CUDA device visible (or an explicit ``devices`` list of
several), each call's pairs are spread over one persistent worker
process per device (:mod:`.workers`), started on first use and stopped by :meth:`close`; else
the model runs in this process on one device.

Bad input: a non-string text raises TypeError naming it; an empty or whitespace-only response
is scored like llm-blender scores it; a response longer than its budget is truncated; K = 1 gives
[[½]] and K = 0 an empty matrix, without loading the model. A missing or corrupt checkpoint file
is a :class:`~.errors.PairRMError` naming it and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from sppo_nemo.backends.pairrm.checkpoint import load_weights, read_checkpoint
from sppo_nemo.backends.pairrm.inputs import CANDIDATE_MAX_LENGTH, SOURCE_MAX_LENGTH, PairEncoder, Seq
from sppo_nemo.backends.pairrm.model import DTYPES, resolve_device, score_batches, torch_dtype
from sppo_nemo.backends.pairrm.tokenizer import PairRMTokens
from sppo_nemo.backends.pairrm.workers import BatchFn, DevicePool
from sppo_nemo.maths.preference import PROBABILITIES, probabilities, scored_from_logits
from sppo_nemo.schema.protocols import Prompt, ProgressFn, check_judge_inputs, compare_by_matrices

DEFAULT_MODEL = "llm-blender/PairRM-hf"
# max_batch_tokens=None: padded tokens per forward by device. On a CPU transformers' forward loses
# to batch 1 as soon as a batch's padded B×heads×L×L attention tensors outgrow the last-level
# cache (benchmarks/README.md, "PairRM batching on a CPU"). The encoder attends one sequence at a
# time on a CPU, so batches only share the matmuls; 2048 tokens (about four ~500-token sequences)
# keeps the feed-forward's intermediate (tokens × 4096 floats, 32 MB) within a server CPU's
# last-level cache. A GPU wants large batches.
AUTO_BATCH_TOKENS = {False: 2048, True: 65536}
PAIRS = ("both", "single")


class PairRMJudge:
    """:class:`~sppo_nemo.schema.protocols.Judge` backed by PairRM (see the module docstring).

    Parameters: ``model`` a directory or hub id in either layout (:mod:`.checkpoint`);
    ``batch_size`` sequences and ``max_batch_tokens`` padded tokens per forward (None: 2048 on a
    CPU, 65536 on a GPU; see ``AUTO_BATCH_TOKENS``); ``dtype`` ``auto`` (bf16 on CUDA, fp32 on CPU;
    bf16 on a CPU with AVX512-BF16 was 1.4× faster in benchmarks/bench_pairrm.py but moved logits
    by up to 0.1), ``fp32``, ``bf16`` or ``fp16``; ``device`` ``auto`` (every visible CUDA device,
    else the CPU), ``cpu``, ``cuda:N``; ``devices`` several devices to spread each call over (one
    worker process each; ``["cpu", "cpu"]`` works too); ``probability`` ``symmetric`` or
    ``score_diff``; ``pairs`` ``both`` (every ordered pair) or ``single`` (each unordered pair once,
    C antisymmetric: half the work; see the module docstring); ``source_max_length`` / ``candidate_max_length`` override the checkpoint's
    budgets (default 1224 / 412); ``backbone`` the encoder directory or hub id for the original
    layout.
    """

    name = "pairrm"

    def __init__(self, model: str | Path = DEFAULT_MODEL, batch_size: int = 64, max_batch_tokens: int | None = None,
                 dtype: str = "auto", device: str = "auto", probability: str = "symmetric",
                 source_max_length: int | None = None, candidate_max_length: int | None = None,
                 backbone: str | Path | None = None, devices: Sequence[str] | None = None, pairs: str = "both"):
        if pairs not in PAIRS:
            raise ValueError(f"pairs={pairs!r}; use one of {PAIRS}")
        if probability not in PROBABILITIES:
            raise ValueError(f"probability={probability!r}; use one of {PROBABILITIES}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1 (or None: by device), got {max_batch_tokens}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}; use one of {DTYPES}")
        self.model_name = str(model)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.dtype_name = dtype
        self.device_name = device
        self.devices = list(devices) if devices else None
        self.probability = probability
        self.pairs = pairs
        self.backbone = backbone
        self._budgets = (source_max_length, candidate_max_length)
        self._encoder: PairEncoder | None = None
        self._net = None
        self._pool: DevicePool | None = None
        self.device = None  # torch.device of the in-process model
        self.dtype = None
        self.stats = {"pairs": 0, "forward_s": 0.0, "tokens": 0, "padded_tokens": 0, "flops": 0.0}

    @property
    def network(self):
        """The in-process PairRMModel (None before it is loaded, after close(), or with worker
        processes): for tests and benchmarks that look inside it."""
        return self._net

    def set_attention(self, mode: str) -> None:
        """The in-process encoder's attention path: ``auto`` (the device's), ``per_sequence``,
        ``padded``, or ``reference`` (transformers' own forward), for equivalence tests and
        benchmarks (sppo_nemo/backends/pairrm/model.py)."""
        if self._net is None:
            raise RuntimeError("set_attention: the judge has no in-process model (not loaded, closed, or in workers)")
        self._net.attention = mode

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_model(cls, net, tokens: PairRMTokens, **kwargs) -> "PairRMJudge":
        """A judge around an in-memory PairRMModel and tokenizer, on one device (tests, benchmarks)."""
        judge = cls(model="<in-memory>", **kwargs)
        if judge.devices and len(judge.devices) > 1:
            raise ValueError("an in-memory model runs on one device; save it (save_pairrm) to use several")
        judge._attach(net, tokens, SOURCE_MAX_LENGTH, CANDIDATE_MAX_LENGTH)
        return judge

    def _set_encoder(self, tokens: PairRMTokens, src_max: int, cand_max: int, cuda: bool) -> None:
        if self.max_batch_tokens is None:
            self.max_batch_tokens = AUTO_BATCH_TOKENS[cuda]
        s, c = self._budgets
        self._encoder = PairEncoder(tokens, s or src_max, c or cand_max)

    def _attach(self, net, tokens: PairRMTokens, src_max: int, cand_max: int) -> None:
        import torch

        dev = self.devices[0] if self.devices else resolve_device(self.device_name)
        self.device = torch.device(dev)
        self.dtype = torch_dtype(self.dtype_name, dev)
        self._net = net.to(device=self.device, dtype=self.dtype).eval()
        self._set_encoder(tokens, src_max, cand_max, self.device.type == "cuda")

    def _worker_devices(self) -> list[str]:
        if self.devices:
            return self.devices
        if self.device_name == "auto":
            import torch

            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return []

    def _load(self) -> None:
        if self._encoder is not None:
            return
        ckpt = read_checkpoint(self.model_name, self.backbone)
        devices = self._worker_devices()
        if len(devices) < 2:
            self._attach(load_weights(ckpt), ckpt.tokens, ckpt.source_max_length, ckpt.candidate_max_length)
            return
        cuda = devices[0].startswith("cuda")
        self._pool = DevicePool(devices, ckpt.path, ckpt.backbone, self.dtype_name, self.batch_size,
                                self.max_batch_tokens or AUTO_BATCH_TOKENS[cuda])
        self._set_encoder(ckpt.tokens, ckpt.source_max_length, ckpt.candidate_max_length, cuda)

    @property
    def encoder(self) -> PairEncoder:
        self._load()
        return self._encoder

    def close(self) -> None:
        """Stop the device workers and free the model; a later call loads it again."""
        if self._pool is not None:
            self._pool.close()
        self._pool = None
        self._net = None
        self._encoder = None

    # ---------------------------------------------------------------- logits
    def _score(self, seqs: Sequence[Seq], on_batch: BatchFn) -> None:
        if self._pool is not None:
            try:
                self._pool.score(seqs, on_batch)
            except BaseException:  # the pool has stopped its workers: start afresh on the next call
                self.close()
                raise
            return
        for group, logits, stats in score_batches(self._net, seqs, self._encoder.tokens.pad_id, self.batch_size,
                                                  self.max_batch_tokens):
            on_batch(group, logits, stats)

    def logit_matrices(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]],
                       progress: ProgressFn | None = None) -> list[np.ndarray]:
        """C[i, j] = s(y_i, y_j | x) for every ordered pair i ≠ j of each prompt (C[i, i] = 0),
        all prompts' pairs batched together (``pairs="single"``: for i < j, and C[j, i] = −C[i, j]);
        ``progress`` is told each prompt as its last pair is scored."""
        check_judge_inputs(prompts, responses)
        mats = [np.zeros((len(rs), len(rs))) for rs in responses]
        todo = [n for n, rs in enumerate(responses) if len(rs) >= 2]
        if progress and len(todo) < len(prompts):
            progress(len(prompts) - len(todo))
        if not todo:
            return mats
        self._load()
        single = self.pairs == "single"
        seqs, where = self._encoder.ordered_pairs([prompts[n] for n in todo], [responses[n] for n in todo], single)
        left = [len(responses[n]) * (len(responses[n]) - 1) // (2 if single else 1) for n in todo]

        def on_batch(indices: list[int], logits: np.ndarray, stats: dict) -> None:
            for key, value in stats.items():
                self.stats[key] += value
            finished = 0
            for i, v in zip(indices, logits):
                t, a, b = where[i]
                mats[todo[t]][a, b] = v
                if single:
                    mats[todo[t]][b, a] = -v
                left[t] -= 1
                finished += left[t] == 0
            if progress and finished:
                progress(finished)

        self._score(seqs, on_batch)
        return mats

    # ---------------------------------------------------------------- Judge protocol
    def preference_matrices(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]],
                            progress: ProgressFn | None = None) -> list[np.ndarray]:
        """M[i, j] = P(y_i ≻ y_j | x) per prompt, K×K, M + Mᵀ = 1, diagonal ½ (K ≤ 1: no model call)."""
        return [probabilities(c, self.probability) for c in self.logit_matrices(prompts, responses, progress)]

    def scored_matrices(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]],
                        progress: ProgressFn | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(M, the aggregated score of each response) per prompt, from one pass of logits."""
        return scored_from_logits(self.logit_matrices(prompts, responses, progress), self.probability)

    def compare(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """P(a_i ≻ b_i | x_i), shape (n,): the [0, 1] entry of the 2×2 matrix of (a_i, b_i)."""
        return compare_by_matrices(self, prompts, a, b)
