"""One persistent worker process per device, for a PairRM judge that sees several devices.

Each worker reads the checkpoint once (:func:`~.checkpoint.read_checkpoint` and
:func:`~.checkpoint.load_weights`, moved to its device) and then scores whatever sequences it is
sent, replying after every length batch with that batch's logits and stats, so the judge can
report progress as prompts finish. The judge deals each call's sequences over the workers longest
first, round robin, so that every device gets about the same tokens; a worker's batching within
its share is the judge's own (:func:`~.model.score_batches`). Workers keep no files and hold no
state between calls but the model; :meth:`DevicePool.close` stops them. Local processes are
started with ``spawn`` (CUDA cannot be forked) and as daemons, so they never outlive the judge's
process. The workers are on sppo-run's own node: one node's devices annotate an iteration of the
paper's setting in minutes (``sppo-run RECIPE --estimate``), so annotation is not spread over nodes.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sppo_nemo.backends.pairrm.errors import PairRMError
from sppo_nemo.backends.pairrm.inputs import Seq

BatchFn = Callable[[list[int], np.ndarray, dict], None]  # (indices into the call's seqs, logits, stats)
_STOP_TIMEOUT_S = 10.0


def serve(conn: Connection, path: str, backbone: str | None, device: str, dtype: str, batch_size: int,
          max_batch_tokens: int) -> None:
    """A worker's main loop: load, say ("ready", None) (or ("refused", message) for a bad
    checkpoint), then answer each list of sequences with ("batch", (indices, logits, stats))
    messages and one ("done", None); ("error", traceback) on a failure; None stops it."""
    try:
        import torch

        from sppo_nemo.backends.pairrm.checkpoint import load_weights, read_checkpoint
        from sppo_nemo.backends.pairrm.model import score_batches, torch_dtype

        ckpt = read_checkpoint(path, backbone)
        net = load_weights(ckpt).to(device=torch.device(device), dtype=torch_dtype(dtype, device)).eval()
        conn.send(("ready", None))
    except PairRMError as exc:  # a bad weights file: the user's to fix, said as it is
        conn.send(("refused", str(exc)))
        return
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            seqs = conn.recv()
        except EOFError:  # the judge's process is gone
            return
        if seqs is None:
            return
        try:
            for batch in score_batches(net, seqs, ckpt.tokens.pad_id, batch_size, max_batch_tokens):
                conn.send(("batch", batch))
            conn.send(("done", None))
        except BaseException:
            conn.send(("error", traceback.format_exc()))
            return


class DevicePool:
    """Worker processes, one per device, all loaded before the constructor returns."""

    def __init__(self, devices: Sequence[str], path: Path, backbone: Path | None, dtype: str, batch_size: int,
                 max_batch_tokens: int):
        self.devices = list(devices)
        self._workers: list[tuple[str, mp.Process, Connection]] = []
        ctx = mp.get_context("spawn")
        for dev in self.devices:
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=serve, name=f"pairrm-{dev}", daemon=True,
                               args=(theirs, str(path), str(backbone) if backbone else None, dev, dtype, batch_size,
                                     max_batch_tokens))
            proc.start()
            theirs.close()
            self._workers.append((dev, proc, ours))
        for dev, proc, conn in self._workers:
            self._expect(dev, proc, conn, "ready")

    def _fail(self, dev: str, detail: str) -> PairRMError:
        self.close()
        tail = "\n".join(detail.strip().splitlines()[-6:])
        return PairRMError(f"the PairRM worker on {dev} failed:\n{tail}\nIf it ran out of memory, lower "
                           "judge.batch_size or judge.max_batch_tokens (or set judge.device to one device); "
                           "finished chunks of the stage are kept: rerun to resume")

    def _recv(self, dev: str, proc, conn: Connection) -> tuple[str, object]:
        try:
            return conn.recv()
        except (EOFError, OSError):
            proc.join(timeout=_STOP_TIMEOUT_S)
            raise self._fail(dev, f"the process exited (exit code {proc.exitcode})") from None

    def _expect(self, dev: str, proc, conn: Connection, kind: str) -> object:
        got, payload = self._recv(dev, proc, conn)
        if got == "refused":
            self.close()
            raise PairRMError(str(payload))
        if got != kind:
            raise self._fail(dev, str(payload))
        return payload

    def score(self, seqs: Sequence[Seq], on_batch: BatchFn) -> None:
        """Deal ``seqs`` over the workers and hand every finished batch to ``on_batch``."""
        order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i][0]), i))
        busy: dict[Connection, tuple[str, object, list[int]]] = {}
        for w, (dev, proc, conn) in enumerate(self._workers):
            share = order[w::len(self._workers)]
            if share:
                try:
                    conn.send([seqs[i] for i in share])
                except OSError:
                    proc.join(timeout=_STOP_TIMEOUT_S)
                    raise self._fail(dev, f"the process exited (exit code {proc.exitcode})") from None
                busy[conn] = (dev, proc, share)
        while busy:
            for conn in wait(list(busy)):
                dev, proc, share = busy[conn]
                kind, payload = self._recv(dev, proc, conn)
                if kind == "done":
                    del busy[conn]
                elif kind == "batch":
                    group, logits, stats = payload
                    on_batch([share[g] for g in group], logits, stats)
                else:
                    raise self._fail(dev, str(payload))

    def close(self) -> None:
        """Stop every worker (asked first, terminated after a grace period)."""
        workers, self._workers = self._workers, []
        for _, _, conn in workers:
            try:
                conn.send(None)
            except OSError:
                pass
        for _, proc, conn in workers:
            proc.join(timeout=_STOP_TIMEOUT_S)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=_STOP_TIMEOUT_S)
            conn.close()

