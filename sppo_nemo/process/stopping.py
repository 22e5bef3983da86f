"""SIGTERM and SIGUSR1: stop now, or at the next step boundary where a trainer can save there.

A scheduler ends a job with SIGTERM at its time limit, and Slurm sends a chosen signal some
minutes before it when asked (``sbatch --signal=B:USR1@300``, launchers/slurm_allocation.sbatch).
Outside training either signal unwinds sppo-run at once (:class:`Terminated`), as Ctrl-C does:
finished stages and the finished chunks of the current one are on disk. Inside a trainer's step
loop (:func:`at_step_boundaries`) the signal is only recorded; the trainer asks :func:`requested`
after each optimizer step, writes a step checkpoint, and raises :class:`Terminated` with what it
kept, so the rerun resumes at that step rather than at the last periodic checkpoint.
"""

from __future__ import annotations

import contextlib
import signal

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Terminated(BaseException):
    """A stop asked for by a signal: unwinds like Ctrl-C, so partial work is closed cleanly.
    ``kept`` says what the stage saved on the way out (a step checkpoint), if anything."""

    def __init__(self, signal_name: str = "SIGTERM", kept: str | None = None):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.kept = kept


_deferring = 0
_requested: str | None = None


def handler(signum, frame) -> None:
    global _requested
    name = signal.Signals(signum).name
    if _deferring:
        _requested = _requested or name
        return
    raise Terminated(name)


def install() -> dict:
    """Handle SIGTERM and SIGUSR1 with :func:`handler`; returns the previous handlers."""
    return {s: signal.signal(s, handler) for s in SIGNALS}


def restore(previous: dict) -> None:
    for s, h in previous.items():
        signal.signal(s, h)


@contextlib.contextmanager
def at_step_boundaries():
    """Within: a signal is recorded for the step loop to act on (:func:`requested`), not raised.
    A signal recorded and not acted on is raised on leaving, so it is never lost."""
    global _deferring, _requested
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring and _requested is not None:
        name, _requested = _requested, None
        raise Terminated(name)


def requested() -> str | None:
    """The signal received inside :func:`at_step_boundaries` and not yet acted on."""
    return _requested


def acted_on() -> None:
    global _requested
    _requested = None
