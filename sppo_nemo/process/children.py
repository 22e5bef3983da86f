"""Worker processes that die with their parent and are stopped as whole process groups.

A backend that runs an engine in a process of its own starts it as the leader of a process group
(``start_new_session=True``); the worker calls :func:`die_with_parent` first thing, and the parent
ends every group with :func:`stop_groups`, so no engine outlives sppo-run, even after kill -9.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """End this worker and its engine processes when the controller dies, even by kill -9, so no
    orphan engine keeps its GPUs or writes to a log a resumed run owns. vLLM's engine core does not
    watch its parent, so the whole process group goes (the controller starts each worker as the
    leader of its own): on the kernel's parent-death signal (Linux prctl), and from a watchdog
    thread in case that signal is not delivered (not Linux, or a handler blocked in C)."""
    signal.signal(signal.SIGTERM, lambda *_: end_group())
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        end_group()

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def end_group() -> None:
    """SIGKILL this worker's process group (its engine core and the engine's workers), or only this
    process when it does not lead a group of its own."""
    if os.getpgid(0) == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os._exit(1)


def stop_groups(procs: list[subprocess.Popen]) -> None:
    """Every worker and its engine processes (each worker leads a process group): what is left of
    the group of a worker that exited (vLLM's resource tracker, an orphaned engine core) at once by
    SIGKILL; a worker still running by SIGTERM first (it ends its own group), SIGKILL after 10 s."""
    for p in procs:
        if p.poll() is not None and group_alive(p.pid):
            signal_group(p.pid, signal.SIGKILL)
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        alive = [p for p in procs if group_alive(p.pid)]
        for p in alive:
            signal_group(p.pid, sig)
        deadline = time.time() + wait
        while alive and time.time() < deadline:
            for p in alive:
                p.poll()
            alive = [p for p in alive if group_alive(p.pid)]
            time.sleep(0.1)
    for p in procs:
        p.wait()


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def package_link(state: Path) -> Path:
    """A folder holding only a link to this package, for another interpreter's PYTHONPATH (vLLM's
    environment): the package's own parent may be a site-packages whose torch must not shadow vLLM's."""
    folder = state / "pythonpath"
    link = folder / "sppo_nemo"
    folder.mkdir(exist_ok=True)
    if not link.exists():
        link.symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
    return folder
