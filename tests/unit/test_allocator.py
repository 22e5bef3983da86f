"""sppo_nemo.process.allocator: after keep_freed_memory(), memory freed by a churn of 3–28 MiB blocks (the
sizes of a CPU training step's activations and weight copies) is reused without new page faults;
with glibc's defaults (SPPO_MALLOC=system) the same churn faults its pages in again."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's, on Linux")

CHURN = textwrap.dedent("""
    import resource
    import numpy as np
    from sppo_nemo.process.allocator import keep_freed_memory

    applied = keep_freed_memory()

    def churn():
        for size_mb in (3, 7, 12, 20, 5, 28) * 5:
            held = [np.ones(size_mb << 17) for _ in range(4)]  # four written blocks of size_mb MiB
            del held

    churn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def churn_faults(malloc: str | None, tunables: str | None = None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPPO_MALLOC", "GLIBC_TUNABLES")}
    if malloc:
        env["SPPO_MALLOC"] = malloc
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


def test_freed_memory_is_reused_without_page_faults():
    applied, faults = churn_faults(None)
    assert applied
    assert faults < 500, faults  # 432 MiB allocated and written again: ~110k pages if faulted anew


def test_system_keeps_glibc_defaults_which_fault_again():
    applied, faults = churn_faults("system")
    assert not applied
    assert faults > 10_000, faults


def test_the_same_settings_as_glibc_tunables_for_other_processes():
    from sppo_nemo.process.allocator import glibc_tunables

    applied, faults = churn_faults("system", glibc_tunables())  # mallopt not called: the tunables alone
    assert not applied
    assert faults < 500, faults


def test_applied_once_per_process():
    from sppo_nemo.process.allocator import keep_freed_memory

    if os.environ.get("SPPO_MALLOC", "").lower() == "system":
        pytest.skip("SPPO_MALLOC=system is set in this environment")
    assert keep_freed_memory() and keep_freed_memory()
