"""The step-checkpoint folder policy (sppo_nemo/formats/step_checkpoints.py) and the deferred stop
(sppo_nemo/process/stopping.py): periods, atomic folders, the newest two kept, damaged ones passed over."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from sppo_nemo.process import stopping
from sppo_nemo.formats.step_checkpoints import (KEEP, CheckpointDue, Period, StepCheckpoints, check_folder, clear_checkpoints,
                                                parse_period)


@pytest.mark.parametrize("text, period", [
    ("30min", Period(seconds=1800.0)), ("1.5h", Period(seconds=5400.0)), ("2 m", Period(seconds=120.0)),
    ("200", Period(steps=200)), ("200steps", Period(steps=200)), ("1step", Period(steps=1)),
    (None, Period()), ("off", Period()),
])
def test_periods(text, period):
    assert parse_period(text) == period


@pytest.mark.parametrize("text", ["abc", "0min", "-3", "1.5steps", "10s"])
def test_bad_periods_name_the_forms(text):
    with pytest.raises(ValueError, match="period"):
        parse_period(text)


def test_due_by_steps_and_by_time():
    by_steps = CheckpointDue(Period(steps=3))
    assert [s for s in range(10) if by_steps(s)] == [2, 5, 8]
    now = [0.0]
    by_time = CheckpointDue(Period(seconds=60), clock=lambda: now[0])
    now[0] = 59.0
    assert not by_time(0)
    now[0] = 60.0
    assert by_time(1)
    by_time.written()
    now[0] = 100.0
    assert not by_time(2)
    assert not CheckpointDue(Period())(5)


def write(text: str):
    return lambda d: (d / "state.pt").write_text(text)


def test_the_newest_two_are_kept_and_the_newest_is_resumed(tmp_path: Path):
    ck = StepCheckpoints(tmp_path, plan_steps=24)
    assert ck.latest().folder is None
    for step in (2, 5, 8):
        ck.save(step, write(f"after {step}"))
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert len(kept) == KEEP == 2 and kept == ["step_000005", "step_000008"]
    found = ck.latest()
    assert found.step == 8 and (found.folder / "state.pt").read_text() == "after 8" and not found.notes


def test_a_damaged_newest_falls_back_and_says_which(tmp_path: Path):
    ck = StepCheckpoints(tmp_path, plan_steps=24)
    ck.save(5, write("after 5"))
    ck.save(8, write("after 8"))
    (tmp_path / "checkpoints/step_000008/state.pt").write_text("after 9")  # same size, other bytes
    found = ck.latest()
    assert found.step == 5
    assert found.notes == ("checkpoint step_000008 is damaged (step_000008/state.pt does not match the checksum "
                           "written with it); passed over",)


def test_meta_missing_or_for_another_plan_is_never_resumed(tmp_path: Path):
    StepCheckpoints(tmp_path, plan_steps=30).save(3, write("x"))
    found = StepCheckpoints(tmp_path, plan_steps=24).latest()
    assert found.folder is None and "plan of 30 steps, this stage has 24" in found.notes[0]
    (tmp_path / "checkpoints/step_000003/meta.json").unlink()
    with pytest.raises(ValueError, match="meta.json cannot be read"):
        check_folder(tmp_path / "checkpoints/step_000003")


def test_an_interrupted_write_is_never_a_checkpoint(tmp_path: Path):
    ck = StepCheckpoints(tmp_path, plan_steps=24)
    ck.save(2, write("after 2"))
    half = tmp_path / "checkpoints/step_000005.tmp"  # a kill before the rename
    half.mkdir()
    (half / "state.pt").write_text("half")
    assert ck.latest().step == 2 and not half.exists()


def test_two_phases_begin_then_commit_make_the_same_checkpoint_as_save(tmp_path: Path):
    """The megatron trainer's way: one process begins, every rank fills the folder (nested files
    too), the one commits; until then it is a .tmp folder and never a checkpoint."""
    ck = StepCheckpoints(tmp_path, plan_steps=24)
    ck.save(2, write("after 2"))
    tmp = ck.begin(5)
    assert tmp == ck.tmp_folder(5) and tmp.is_dir() and not any(tmp.iterdir())
    (tmp / "stale").write_text("from a killed attempt")
    assert ck.begin(5) == tmp and not any(tmp.iterdir())  # a second begin starts it afresh
    (tmp / "dist").mkdir()
    (tmp / "dist" / "__0_0.distcp").write_text("rank 0")
    (tmp / "fit_1.pt").write_text("rank 1")
    assert not ck.folder(5).exists()  # not yet committed
    assert ck.commit(5, ck.tmp_folder(5)) == ck.folder(5) and not tmp.exists()
    meta = check_folder(ck.folder(5))
    assert meta["step"] == 5 and meta["steps"] == 24 and set(meta["files"]) == {"dist/__0_0.distcp", "fit_1.pt"}
    ck.commit(8, ck.begin(8))
    (ck.begin(11) / "fit_0.pt").write_text("killed before the commit")
    assert ck.latest().step == 8 and not ck.tmp_folder(11).exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000005", "step_000008"]


def test_the_reference_is_read_back_only_when_whole(tmp_path: Path):
    ck = StepCheckpoints(tmp_path, plan_steps=24)
    assert ck.reference() is None
    ck.save_reference(lambda d: (d / "reference.pt").write_text("logps"))
    assert ck.reference() == tmp_path / "reference"
    (tmp_path / "reference/reference.pt").write_text("log")
    assert ck.reference() is None
    clear_checkpoints(tmp_path)
    assert not (tmp_path / "reference").exists()


def test_a_signal_inside_the_step_loop_waits_for_the_boundary():
    previous = stopping.install()
    try:
        with pytest.raises(stopping.Terminated) as outside:
            os.kill(os.getpid(), signal.SIGUSR1)
        assert outside.value.signal_name == "SIGUSR1"
        with stopping.at_step_boundaries():
            os.kill(os.getpid(), signal.SIGTERM)  # recorded, not raised
            assert stopping.requested() == "SIGTERM"
            stopping.acted_on()
        assert stopping.requested() is None
        with pytest.raises(stopping.Terminated):  # recorded and never acted on: raised on leaving
            with stopping.at_step_boundaries():
                os.kill(os.getpid(), signal.SIGTERM)
        assert stopping.requested() is None
    finally:
        stopping.restore(previous)


def test_a_requeue_loop_without_progress_is_refused(tmp_path: Path):
    from sppo_nemo.launch.requeue import record_stop

    (tmp_path / "iter_01/train.partial/checkpoints/step_000002").mkdir(parents=True)
    (tmp_path / "iter_01/train.partial/checkpoints/step_000002/state.pt").write_text("x")
    assert record_stop(tmp_path, "41", "SIGUSR1") is None  # the first stop of job 41
    assert record_stop(tmp_path, "7", "SIGUSR1") is None  # another job's stops are its own
    (tmp_path / "iter_01/train.partial/checkpoints/step_000005").mkdir()
    (tmp_path / "iter_01/train.partial/checkpoints/step_000005/state.pt").write_text("x")
    (tmp_path / "iter_01/train.partial/worker.log").write_text("grows")  # logs are not progress
    assert record_stop(tmp_path, "41", "SIGUSR1") is None  # a new checkpoint since: progress
    (tmp_path / "iter_01/train.partial/worker.log").write_text("grows more")
    stuck = record_stop(tmp_path, "41", "SIGTERM")
    assert stuck and "Slurm job 41 was stopped (SIGTERM) twice with nothing new" in stuck
    assert "trainer.checkpoint_every" in stuck and "#SBATCH --time" in stuck
