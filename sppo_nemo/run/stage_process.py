"""The process rule: on a machine with CUDA, sppo-run itself never computes on a GPU.

Every stage that may put an engine on a device (generate, annotate, train, evaluate: the
transformers generator and KL scorer, the judges, the torch trainer) runs in a worker process of
its own, started fresh (``spawn``) and ended when the stage's work is done, so the operating
system takes back all of its device memory before the next stage's engine starts: no cached
allocator blocks, no CUDA context, no fragmentation carried from one engine to the next. The
engines that already live in their own processes (vLLM workers, megatron ranks, PairRM's device
pool) are started from that worker. On a machine without CUDA the stages run in-process: there
is no device memory to hand back, and a worker's start (importing torch and transformers again,
seconds per stage) would only cost time.

The worker reads the stage's inputs (the same frozen object the fingerprint is made of) and
writes into the stage's partial folder as the in-process stage does; the runner commits. A
``UserError`` or ``OSError`` in the worker reaches sppo-run as the same error; anything else, or a
worker that dies, is a ``StageProcessError`` naming the stage, with the worker's last words.
Ctrl-C, SIGTERM and SIGUSR1 stop the worker (its finished chunks are already on disk) and unwind
sppo-run: the worker gets SIGTERM and up to :data:`STOP_GRACE` seconds, in which a trainer writes a
step checkpoint at its next step boundary (sppo_nemo/process/stopping.py) and says what it kept.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from pathlib import Path
from types import ModuleType

from sppo_nemo.process import stopping
from sppo_nemo.schema.errors import UserError

DEVICE_STAGES = ("generate", "annotate", "train", "evaluate")  # build reads and writes files only
STOP_GRACE = 120.0  # seconds a stopped worker has to reach a step boundary and save there


class StageProcessError(UserError):
    pass


def in_worker(stage_name: str, cuda: bool) -> bool:
    """Whether a stage runs in a worker process of its own on this machine."""
    return cuda and stage_name in DEVICE_STAGES


def run(module: ModuleType, inputs, workdir: Path, progress: bool, label: str,
        threads: int | None = None) -> dict:
    """``module.run(inputs, workdir, bar)`` in a fresh worker process; its result, or its error.
    ``threads``: the recipe's torch intra-op threads, set in the worker as sppo-run sets its own."""
    mp = multiprocessing.get_context("spawn")
    receive, send = mp.Pipe(duplex=False)
    proc = mp.Process(target=_worker, args=(module.__name__, inputs, workdir, progress, threads, send),
                      name=f"sppo {label}")
    proc.start()
    send.close()
    try:
        try:
            kind, payload = receive.recv()
        except EOFError:  # the worker died without a word (killed, out of memory, a crash in C)
            proc.join()
            raise StageProcessError(
                f"{label}: its worker process ended with exit code {proc.exitcode} before finishing; the "
                f"finished chunks of the stage are kept. See the output above for why, then rerun the same "
                f"command to resume.") from None
        except (stopping.Terminated, KeyboardInterrupt) as stop:
            raise _stop_worker(proc, receive, stop) from None
        proc.join()
    finally:
        if proc.is_alive():  # Ctrl-C or SIGTERM in sppo-run: stop the worker, then unwind
            proc.terminate()
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        receive.close()
    if kind == "done":
        return payload
    if kind == "user":
        message, code = payload
        err = UserError(message)
        err.exit_code = code  # the worker's error kind decides sppo-run's exit status, as in-process
        raise err
    if kind == "terminated":  # the worker itself was signalled (a scheduler signals every process)
        raise stopping.Terminated(*payload)
    if kind == "os":
        errno_, strerror, filename = payload
        raise OSError(errno_, strerror, filename)
    raise StageProcessError(f"{label}: its worker process failed:\n{payload}")


def _stop_worker(proc, receive, stop: BaseException) -> BaseException:
    """Pass a stop on to the worker and wait for its last word: a trainer answers with the step
    checkpoint it wrote. Returns the exception to unwind sppo-run with."""
    proc.terminate()
    try:
        if receive.poll(STOP_GRACE):
            kind, payload = receive.recv()
            if kind == "terminated" and isinstance(stop, stopping.Terminated):
                return stopping.Terminated(stop.signal_name, payload[1])
    except (EOFError, OSError):
        pass
    return stop


def _worker(module_name: str, inputs, workdir: Path, progress: bool, threads: int | None, send) -> None:
    """The worker's whole life: the stage's work, then one message to sppo-run."""
    import importlib

    if threads:  # the same reduction order, hence the same numbers, as an in-process stage
        import torch

        torch.set_num_threads(threads)

    from sppo_nemo.stages.context import progress_bar

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is sppo-run's to handle: it stops this process
    stopping.install()  # SIGTERM from sppo-run (or the scheduler): a trainer saves at its next step boundary
    try:
        module = importlib.import_module(module_name)
        message = ("done", module.run(inputs, workdir, progress_bar(progress)))
    except UserError as exc:
        message = ("user", (str(exc), exc.exit_code))
    except OSError as exc:
        message = ("os", (exc.errno, exc.strerror or str(exc), exc.filename))
    except stopping.Terminated as exc:
        message = ("terminated", (exc.signal_name, exc.kept))
    except BaseException:  # noqa: BLE001 - everything else goes back as text, the stage named by the caller
        message = ("error", traceback.format_exc(limit=-8))
    try:
        send.send(message)
    except Exception:  # noqa: BLE001 - a result that cannot be pickled: say so rather than vanish
        send.send(("error", f"the stage's result could not be sent back:\n{traceback.format_exc(limit=-4)}"))
    send.close()
