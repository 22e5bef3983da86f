"""One persistent worker process per device, for a PairRM judge that sees several devices.

Each worker reads the checkpoint once (:func:`~.checkpoint.read_checkpoint` and
:func:`~.checkpoint.load_weights`, moved to its device) and then scores whatever sequences it is
sent, replying after every length batch with that batch's logits and stats, so the judge can
report progress as prompts finish. The judge deals each call's sequences over the workers longest
first, round robin, so that every device gets about the same tokens; a worker's batching within
its share is the judge's own (:func:`~.model.score_batches`). Workers keep no files and hold no
state between calls but the model; :meth:`DevicePool.close` stops them. Local processes are
started with ``spawn`` (CUDA cannot be forked) and as daemons, so they never outlive the judge's
process. A worker placed on another node of a Slurm allocation is an srun step running
:mod:`.remote`, which connects back over TCP (an authenticated ``multiprocessing`` listener on this
node's address) and then speaks the same messages; when the judge's process dies its connection
drops and the worker ends.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection, Listener, wait
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sppo_nemo.backends import slurm
from sppo_nemo.backends.pairrm.errors import PairRMError
from sppo_nemo.backends.pairrm.inputs import Seq

BatchFn = Callable[[list[int], np.ndarray, dict], None]  # (indices into the call's seqs, logits, stats)
_STOP_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 600.0  # an srun step waits for its node and imports torch before it connects
AUTHKEY_ENV = "SPPO_PAIRRM_AUTHKEY"


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
    """Worker processes, one per device, all loaded before the constructor returns. ``nodes`` (one
    per device) places workers on nodes of the Slurm allocation through srun; None: all here."""

    def __init__(self, devices: Sequence[str], path: Path, backbone: Path | None, dtype: str, batch_size: int,
                 max_batch_tokens: int, nodes: Sequence[str] | None = None, address: str | None = None,
                 srun_args: Sequence[str] = ()):
        self.devices = list(devices)
        self._workers: list[tuple[str, object, Connection]] = []
        args = (str(path), str(backbone) if backbone else None, dtype, batch_size, max_batch_tokens)
        if nodes is None:
            self._start_local(args)
        else:
            self._start_srun(args, list(nodes), address, list(srun_args))
        for dev, proc, conn in self._workers:
            self._expect(dev, proc, conn, "ready")

    def _start_local(self, args: tuple) -> None:
        ctx = mp.get_context("spawn")
        for dev in self.devices:
            ours, theirs = ctx.Pipe()
            path, backbone, dtype, batch_size, max_batch_tokens = args
            proc = ctx.Process(target=serve, name=f"pairrm-{dev}", daemon=True,
                               args=(theirs, path, backbone, dev, dtype, batch_size, max_batch_tokens))
            proc.start()
            theirs.close()
            self._workers.append((dev, proc, ours))

    def _start_srun(self, args: tuple, nodes: list[str], address: str | None, srun_args: list[str]) -> None:
        """One srun step per device on its node, each connecting back to a listener here."""
        key = os.urandom(32)
        listener = Listener(("0.0.0.0", 0), authkey=key)
        port = listener.address[1]
        path, backbone, dtype, batch_size, max_batch_tokens = args
        env = dict(os.environ, **{AUTHKEY_ENV: key.hex()})
        steps = []
        for i, (dev, node) in enumerate(zip(self.devices, nodes)):
            cmd = [*slurm.step_on(node, srun_args, sys.executable), "-m", "sppo_nemo.backends.pairrm.remote",
                   f"{address}:{port}", str(i), dev, path, backbone or "-", dtype, str(batch_size), str(max_batch_tokens)]
            steps.append(_Step(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL), f"{dev} on {node}"))
        conns: dict[int, Connection] = {}
        accepting = threading.Thread(target=_accept, args=(listener, conns, len(steps)), daemon=True)
        accepting.start()
        deadline = time.time() + _CONNECT_TIMEOUT_S
        while accepting.is_alive():
            dead = [s for s in steps if s.exitcode is not None]
            if dead or time.time() > deadline:
                why = (f"the srun step of the PairRM worker {dead[0].label} exited with {dead[0].exitcode} before "
                       f"connecting" if dead else f"the PairRM workers did not connect within {_CONNECT_TIMEOUT_S:.0f}s")
                for s in steps:
                    s.terminate()
                listener.close()
                raise PairRMError(f"{why}; check that the nodes reach {address}:{port} and that sppo-nemo is "
                                  f"installed there (judge.srun_args can add a container image)")
            accepting.join(timeout=0.2)
        listener.close()
        if len(conns) < len(steps):
            for s in steps:
                s.terminate()
            raise PairRMError(f"only {len(conns)} of {len(steps)} PairRM workers connected to {address}:{port}")
        self._workers = [(f"{dev} on {step.label.split(' on ')[1]}", step, conns[i])
                         for i, (dev, step) in enumerate(zip(self.devices, steps))]

    @property
    def pids(self) -> list[int]:
        return [proc.pid for _, proc, _ in self._workers]  # of srun itself for a remote worker

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


def _accept(listener: Listener, conns: dict[int, Connection], n: int) -> None:
    while len(conns) < n:
        try:
            conn = listener.accept()
            conns[int(conn.recv())] = conn
        except (OSError, EOFError):  # closed under us after a failure, or a client that went away
            return


class _Step:
    """An srun step standing where a local worker's Process would (join, exitcode, is_alive,
    terminate, pid): srun passes a SIGTERM on to its task."""

    def __init__(self, popen: subprocess.Popen, label: str):
        self.popen, self.label = popen, label

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
