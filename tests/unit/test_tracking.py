"""Experiment tracking's pure parts (sppo_nemo/run/tracking.py): the global step across iterations, the
figures a stage's files become, the ledger of logged stages; and that a tracker asked for but not
installed stops the run before any stage, while trackers left off import and write nothing."""

import sys

import pytest

from sppo_nemo.run import tracking
from sppo_nemo.stages.context import Context
from sppo_nemo.run.runner import execute
from tests.helpers import TINY_RECIPE, load_recipe


def test_iteration_t_starts_after_the_steps_of_the_earlier_iterations():
    assert tracking.step_offset([]) == 0  # iteration 1
    assert tracking.step_offset([3]) == 3  # iteration 2 after 3 steps: its step 0 is global step 3
    assert tracking.step_offset([3, 5]) == 8


def test_train_points_are_every_numeric_key_at_the_global_step():
    rows = [{"step": 0, "loss": 0.5, "lr": 1e-3, "tokens": 12, "resumed": True, "note": "x"},
            {"step": 1, "loss": 0.25, "lr": 5e-4, "tokens": 10}]
    assert tracking.train_points(rows, 8) == [
        ("train/loss", 8, 0.5), ("train/lr", 8, 1e-3), ("train/tokens", 8, 12.0),
        ("train/loss", 9, 0.25), ("train/lr", 9, 5e-4), ("train/tokens", 9, 10.0)]
    assert tracking.train_points([], 3) == []


def test_eval_points_are_at_the_iteration_with_intervals_split():
    metrics = {"iteration": 2, "win_rate_vs_base": 0.625, "win_rate_vs_base_ci": [0.5, 0.75],
               "kl_to_base": 1.5, "mean_tokens": 30.25, "backend": "torch", "prompts_cut": 0,
               "exact": False, "kl_to_base_ci": [1.0, 2.0]}
    assert tracking.eval_points(metrics) == [
        ("eval/win_rate_vs_base", 2, 0.625), ("eval/win_rate_vs_base_ci_lo", 2, 0.5),
        ("eval/win_rate_vs_base_ci_hi", 2, 0.75), ("eval/kl_to_base", 2, 1.5), ("eval/mean_tokens", 2, 30.25),
        ("eval/prompts_cut", 2, 0.0), ("eval/kl_to_base_ci_lo", 2, 1.0), ("eval/kl_to_base_ci_hi", 2, 2.0)]
    assert tracking.eval_points({"iteration": 0, "mean_tokens": 4.0}) == [("eval/mean_tokens", 0, 4.0)]


def test_pending_is_what_was_never_logged_or_was_redone_in_plan_order():
    done = [("iter_00/evaluate", "d0"), ("iter_01/train", "d1"), ("iter_01/evaluate", "d2")]
    assert tracking.pending(done, {}) == ["iter_00/evaluate", "iter_01/train", "iter_01/evaluate"]
    assert tracking.pending(done, {"iter_00/evaluate": "d0", "iter_01/train": "d1", "iter_01/evaluate": "d2"}) == []
    # iter_01/train redone (--restart-from) with other outputs; iter_01/evaluate committed, then a crash
    assert tracking.pending(done, {"iter_00/evaluate": "d0", "iter_01/train": "old"}) == ["iter_01/train",
                                                                                          "iter_01/evaluate"]
    # a stage removed since it was logged is not asked for
    assert tracking.pending(done[:1], {"iter_00/evaluate": "d0", "iter_01/train": "d1"}) == []


def test_the_ledger_round_trips_atomically_and_a_broken_one_names_the_fix(tmp_path):
    assert tracking.read_ledger(tmp_path) == {"logged": {}}
    ledger = {"wandb_id": tracking.wandb_id(tmp_path), "logged": {"tensorboard": {"iter_01/train": "d1"}}}
    tracking.write_ledger(tmp_path, ledger)
    assert tracking.read_ledger(tmp_path) == ledger
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tracking.json"]  # no temporary file left
    (tmp_path / "tracking.json").write_text('{"logged": ')
    with pytest.raises(tracking.TrackingError, match="tracking.json cannot be read.*delete it"):
        tracking.read_ledger(tmp_path)


def test_the_wandb_id_is_stable_for_a_run_directory(tmp_path):
    a = tracking.wandb_id(tmp_path / "runs" / "demo")
    assert a == tracking.wandb_id(tmp_path / "runs" / "." / "demo") and len(a) == 16 and int(a, 16) >= 0
    assert a != tracking.wandb_id(tmp_path / "runs" / "demo2")


def _ctx(tmp_path, *overrides):
    r = load_recipe(TINY_RECIPE, tmp_path, "policy.model=nobody/never-read", f"output_dir={tmp_path}", *overrides)
    return Context(r, tmp_path / r.name, progress=False)


@pytest.fixture
def no_trackers(monkeypatch):
    """tensorboard and wandb made unimportable (a None entry in sys.modules makes import raise)."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "wandb", None)


def test_trackers_off_import_nothing_and_write_nothing(tmp_path, no_trackers):
    ctx = _ctx(tmp_path)
    ctx.run_dir.mkdir()
    with tracking.session(ctx) as tracker:
        tracker.stage_committed(1, "train")
    assert list(ctx.run_dir.iterdir()) == []


@pytest.mark.parametrize("key, package", [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_a_tracker_not_installed_stops_the_run_before_any_stage(tmp_path, no_trackers, key, package):
    ctx = _ctx(tmp_path, f"logging.{key}=true")
    with pytest.raises(tracking.TrackingError) as info:
        execute(ctx, log=lambda *_: None)
    assert str(info.value).startswith(f"logging.{key}: needs `pip install {package}` (or set it false)")
    assert info.value.exit_code == 1
    assert [p.name for p in ctx.run_dir.iterdir()] == [".lock"]  # no stage, no resolved recipe, no ledger
