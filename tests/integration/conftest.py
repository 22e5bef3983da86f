"""Fixtures of the integration tier: the tiny random Llama, one reference run of the CI recipe,
and a real two-node Slurm on this host."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

# Re-exported for test modules that still import them from here; new code imports tests.helpers.
from tests.helpers import ROOT, TINY_RECIPE, cli_env, sppo_run

__all__ = ["ROOT", "TINY_RECIPE", "cli_env", "sppo_run", "tiny_model", "reference_run", "slurm"]

LOCAL_SH = ROOT / "scripts" / "slurm" / "local.sh"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from sppo_nemo.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def reference_run(tiny_model, tmp_path_factory) -> Path:
    """recipes/ci/tiny_sppo.yaml run once, uninterrupted: the reference for the other tests."""
    out = tmp_path_factory.mktemp("ref")
    proc = sppo_run(tiny_model, TINY_RECIPE, f"output_dir={out}")
    assert "| iter |" in proc.stdout  # the per-iteration table
    return out / "tiny_sppo"


def _missing() -> str | None:
    absent = [b for b in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(b) is None]
    if absent:
        return (f"needs Slurm (slurm marker): {', '.join(absent)} not found; `bash scripts/slurm/local.sh install` "
                f"(root, apt) installs Debian's slurmctld, slurmd, slurm-client and munge")
    try:
        import nemo_run  # noqa: F401
    except ImportError as exc:
        return f"needs NeMo-Run (slurm marker): {exc}; pip install -e '.[cluster]'"
    return None


def _free_port_base() -> int:
    for base in range(21817, 40000, 97):
        try:
            for port in (base, base + 1, base + 2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports for the test cluster")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real two-node Slurm in a temporary directory (scripts/slurm/local.sh), for the session:
    yields {SLURM_CONF, base}; skipped, saying why, without slurmctld or NeMo-Run."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, PORT=str(_free_port_base()))
    started = time.perf_counter()
    proc = subprocess.run(["bash", str(LOCAL_SH), "start", str(base), "2"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n" + "\n".join(
        p.read_text()[-2000:] for p in (base / "log").glob("*.log"))
    print(f"slurm: two nodes up in {time.perf_counter() - started:.2f}s")
    try:
        yield {"SLURM_CONF": str(base / "slurm.conf"), "base": base}
    finally:
        subprocess.run(["bash", str(LOCAL_SH), "stop", str(base)], env=env, capture_output=True, timeout=60)
