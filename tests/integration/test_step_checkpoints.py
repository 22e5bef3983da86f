"""Step checkpoints of the torch train stage (trainer.checkpoint_every), through the real `sppo-run`
on the tiny model: a train stage killed (kill -9) at several steps, or stopped by SIGTERM/SIGUSR1,
resumes at its last checkpoint and commits the artifacts of an uninterrupted run, byte for byte; a
damaged checkpoint is passed over by name; the committed stage keeps no checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sppo_nemo.formats.artifacts import digest_files

from tests.helpers import TINY_RECIPE, cli_env, sppo_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# one small iteration, no evaluation: 24 optimizer steps of the tiny model
T1 = ("T=1", "K=4", "data.split_size=24", "evaluation.enabled=false")
STAGES = ("iter_01/build", "iter_01/train")


def command(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "sppo_nemo", str(TINY_RECIPE), f"output_dir={out}", *T1, *args, "--no-progress"]


def run(tiny_model, out: Path, *args: str) -> subprocess.CompletedProcess:
    return sppo_run(tiny_model, TINY_RECIPE, f"output_dir={out}", *T1, *args, check=False)


def digests(out: Path) -> dict:
    return {s: digest_files(out / "tiny_sppo" / s) for s in STAGES}


def train_timings(out: Path) -> dict:
    lines = (out / "tiny_sppo/iter_01/train/timings.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, tmp_path_factory) -> Path:
    """The stage run whole at the default period (30 minutes: no checkpoint in a tiny stage)."""
    out = tmp_path_factory.mktemp("whole")
    proc = run(tiny_model, out)
    assert proc.returncode == 0, proc.stderr
    return out


def partial_checkpoints(out: Path) -> list[str]:
    root = out / "tiny_sppo/iter_01/train.partial/checkpoints"
    return sorted(p.name for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []


def run_until_checkpoint(tiny_model, out: Path, step: int, *args: str) -> subprocess.Popen:
    """Start the run; return it once the train stage has committed the checkpoint after ``step``."""
    proc = subprocess.Popen(command(out, *args), env=cli_env(tiny_model), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while f"step_{step:06d}" not in partial_checkpoints(out):
        assert proc.poll() is None, f"the run ended before checkpoint {step}: {proc.stderr.read()}"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    return proc


@pytest.mark.parametrize("step", [2, 17])  # every third step: after steps 2, 5, 8, ...
def test_kill_9_mid_training_resumes_at_the_last_checkpoint_byte_identical(tiny_model, uninterrupted, tmp_path,
                                                                         step):
    proc = run_until_checkpoint(tiny_model, tmp_path, step, "trainer.checkpoint_every=3steps")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = partial_checkpoints(tmp_path)
    assert kept, kept  # the newest two (three while the oldest is being removed: a kill may land there)
    newest = int(kept[-1].split("_")[1])
    assert (tmp_path / "tiny_sppo/iter_01/train.partial/reference/reference.pt").is_file()

    again = run(tiny_model, tmp_path, "trainer.checkpoint_every=3steps")
    assert again.returncode == 0, again.stderr
    assert f"resumed after optimizer step {newest + 1} of 24" in again.stdout + again.stderr
    assert train_timings(tmp_path)["resumed_at_step"] == newest + 1
    assert digests(tmp_path) == digests(uninterrupted)
    train = tmp_path / "tiny_sppo/iter_01/train"
    assert not (train / "checkpoints").exists() and not (train / "reference").exists()  # nothing left after commit
    steps = [json.loads(line)["step"] for line in (train / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(24))  # each step once


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_in_training_saves_at_the_next_step_and_the_rerun_resumes(tiny_model, uninterrupted, tmp_path, sig):
    # the period is long: the only checkpoint is the one the signal asks for
    proc = subprocess.Popen(command(tmp_path, "trainer.checkpoint_every=10h"), env=cli_env(tiny_model),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reference = tmp_path / "tiny_sppo/iter_01/train.partial/reference"
    deadline = time.time() + 300
    while not reference.is_dir():  # the step loop starts right after the reference is written
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    name = sig.name
    assert proc.returncode == 143, err
    assert f"terminated ({name})" in err and "saved a step checkpoint after optimizer step" in err, err
    assert "Traceback" not in err
    kept = partial_checkpoints(tmp_path)
    assert len(kept) == 1, kept

    again = run(tiny_model, tmp_path, "trainer.checkpoint_every=10h")
    assert again.returncode == 0, again.stderr
    assert train_timings(tmp_path)["resumed_at_step"] == int(kept[0].split("_")[1]) + 1
    assert digests(tmp_path) == digests(uninterrupted)


def _truncate_state(folder: Path) -> None:
    f = folder / "state.pt"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.mark.parametrize("damage, words", [(_truncate_state, "state.pt has")], ids=["truncated"])
def test_a_damaged_checkpoint_is_passed_over_by_name(tiny_model, uninterrupted, tmp_path, damage, words):
    proc = run_until_checkpoint(tiny_model, tmp_path, 11, "trainer.checkpoint_every=6steps")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    root = tmp_path / "tiny_sppo/iter_01/train.partial/checkpoints"
    assert partial_checkpoints(tmp_path)[-1] == "step_000011"
    damage(root / "step_000011")

    again = run(tiny_model, tmp_path, "trainer.checkpoint_every=6steps")
    assert again.returncode == 0, again.stderr
    said = again.stdout + again.stderr
    assert "checkpoint step_000011 is damaged" in said and words in said, said
    assert "resumed after optimizer step 6 of 24" in said
    assert digests(tmp_path) == digests(uninterrupted)


def test_with_every_checkpoint_damaged_training_starts_over_and_says_so(tiny_model, uninterrupted, tmp_path):
    proc = run_until_checkpoint(tiny_model, tmp_path, 5, "trainer.checkpoint_every=6steps")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for folder in (tmp_path / "tiny_sppo/iter_01/train.partial/checkpoints").glob("step_*"):
        _truncate_state(folder)
    again = run(tiny_model, tmp_path, "trainer.checkpoint_every=6steps")
    assert again.returncode == 0, again.stderr
    assert "training starts from its first step" in again.stdout + again.stderr
    assert train_timings(tmp_path)["resumed_at_step"] == 0
    assert digests(tmp_path) == digests(uninterrupted)


def test_the_period_is_not_part_of_the_recipe_a_stage_was_made_with(tiny_model, uninterrupted, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    proc = run(tiny_model, out, "trainer.checkpoint_every=1steps")
    assert proc.returncode == 0, proc.stderr
    assert "already done" in proc.stdout or "0 stage(s) run" in proc.stdout, proc.stdout
