"""The real CLI refuses a megatron recipe on this CPU machine (without the test-only CPU patches of
cpu_patches/megatron_cpu_site) before any stage runs, with one message naming the problem and the fix.
Before sppo_nemo/run/preflight.py it ran iter_00/evaluate, generate, annotate and build, then failed at
train quoting the workers' traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sppo_nemo.launch import records
from sppo_nemo.run.preflight import CPU_PATCH_SITE
from tests.helpers import TINY_RECIPE, cli_env, sppo_cmd


def test_a_megatron_recipe_without_cuda_is_refused_before_the_first_stage(tiny_model: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has CUDA: megatron runs here")
    env = cli_env(tiny_model)
    env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                        if p and Path(p).name != CPU_PATCH_SITE)
    run = tmp_path / "tiny_sppo"

    def cli(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(sppo_cmd(TINY_RECIPE, f"output_dir={tmp_path}", "trainer.backend=megatron",
                                       "trainer.megatron.tensor_parallel=2", *extra),
                              env=env, capture_output=True, text=True, timeout=300)

    proc = cli()
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert "Traceback" not in err and "Traceback" not in proc.stdout
    assert err.startswith("sppo-run: this machine cannot run the recipe's engines; nothing was run:\n"), err
    assert "iter_01/train, iter_02/train: trainer.backend=megatron needs CUDA GPUs (TP·PP·DP = 2·1·1 = 2 " in err
    assert "is a CPU build" in err or "no GPU" in err
    assert "set trainer.backend=torch to train here" in err
    assert not list(run.glob("iter_*"))  # no stage folder, nor a partial one
    assert "running" not in proc.stdout

    # a chained job's `--stage`: refused the same way, and --status learns why from its record
    proc = cli("--stage", "iter_01/train")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "iter_01/train: trainer.backend=megatron" in proc.stderr and "iter_02" not in proc.stderr
    assert not list(run.glob("iter_*"))
    record = records.stage_record(run, "iter_01/train")
    assert record["state"] == "failed" and record["exit"] == 1 and "needs CUDA GPUs" in record["message"]

    # a stage of the same run that needs no megatron is not refused
    proc = cli("--stage", "iter_00/evaluate")
    assert proc.returncode == 0, proc.stderr
    assert (run / "iter_00" / "evaluate" / "_DONE").exists()
