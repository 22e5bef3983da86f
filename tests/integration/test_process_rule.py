"""The process rule (sppo_nemo/run/stage_process.py): on a machine with CUDA the sppo-run process never
computes on a GPU; each device stage runs in a worker process that exits when the stage is done."""

from __future__ import annotations

import json
import sys

import pytest

from sppo_nemo.formats.artifacts import digest_files
from tests.helpers import ROOT, TINY_RECIPE, cli_env, sppo_cmd

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGES = ["iter_00/evaluate"] + [f"iter_01/{s}" for s in ("generate", "annotate", "build", "train", "evaluate")]


def test_told_of_a_gpu_the_controller_leaves_it_to_stage_workers(tiny_model, reference_run, tmp_path):
    """The tiny recipe's first iteration (T=1: its stages are the two-iteration run's) with the controller's torch.cuda reporting a GPU and refusing
    every use: the run finishes, nothing in the controller touched CUDA, and every stage equals the
    in-process reference run's (the workers computed on this CPU, as the reference did)."""
    import subprocess

    record = tmp_path / "cuda_calls.json"
    cmd = [sys.executable, str(ROOT / "tests" / "integration" / "cuda_recording_controller.py"), str(record),
           *sppo_cmd(TINY_RECIPE, f"output_dir={tmp_path}", "T=1")[3:]]
    proc = subprocess.run(cmd, env=cli_env(tiny_model), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert json.loads(record.read_text()) == []
    run = tmp_path / "tiny_sppo"
    for stage in STAGES:
        assert digest_files(run / stage) == digest_files(reference_run / stage), stage


def test_without_cuda_the_stages_run_in_process():
    from sppo_nemo.run.stage_process import in_worker

    assert not any(in_worker(s, cuda=False) for s in ("generate", "annotate", "build", "train", "evaluate"))
    assert [s for s in ("generate", "annotate", "build", "train", "evaluate") if in_worker(s, cuda=True)] == [
        "generate", "annotate", "train", "evaluate"]


@pytest.mark.parametrize("what", ["write", "user-error", "disk-full", "bug", "die"])
def test_a_stage_worker_hands_back_its_result_or_its_error(tmp_path, what):
    import os

    from sppo_nemo.run import stage_process
    from sppo_nemo.schema.errors import UserError
    from tests.integration import fake_stage

    def call():
        return stage_process.run(fake_stage, what, tmp_path, progress=False, label="iter_01/fake")

    if what == "write":
        result = call()
        assert result["pid"] != os.getpid() and (tmp_path / "out.txt").read_text() == str(result["pid"])
    elif what == "user-error":  # the same message and exit status as in-process (3, a stale stage)
        with pytest.raises(UserError, match="naming the problem and the fix") as exc:
            call()
        assert exc.value.exit_code == 3
    elif what == "disk-full":  # cli turns it into the full-disk message, as in-process
        with pytest.raises(OSError) as exc:
            call()
        assert exc.value.errno == 28 and exc.value.filename == str(tmp_path / "out.txt")
    elif what == "bug":
        with pytest.raises(stage_process.StageProcessError, match=r"iter_01/fake(.|\n)*KeyError"):
            call()
    else:
        with pytest.raises(stage_process.StageProcessError, match="exit code 9.*rerun the same command"):
            call()
