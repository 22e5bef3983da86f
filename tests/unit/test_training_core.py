"""The one trainer core (sppo_nemo/maths/training.py): the plan, the schedule and the step metrics,
with hand-worked numbers. Every trainer backend drives it, so these pin all of them."""

from __future__ import annotations

import random

import pytest
import torch

from sppo_nemo.schema.config import TrainerConfig
from sppo_nemo.schema.protocols import PairRow, PointRow
from sppo_nemo.maths.seeds import derive_seed
from sppo_nemo.maths.training import Fit, Slot, StepStats, plan_steps, sequences_per_row

pytestmark = pytest.mark.unit


def test_plan_is_a_seeded_shuffle_cut_into_padded_steps():
    steps = plan_steps(5, batch_size=2, grad_accum=2, dp=1, epochs=1, seed=3)
    order = list(range(5))
    random.Random(3).shuffle(order)
    assert steps == [[Slot(tuple(order[0:2]), 0), Slot(tuple(order[2:4]), 0)],
                     [Slot(tuple(order[4:5]), 0), Slot((), -1)]]


def test_plan_spans_epochs_and_splits_over_data_parallel_ranks():
    steps = plan_steps(4, batch_size=2, grad_accum=1, dp=2, epochs=2, seed=0)
    assert len(steps) == 2 and all(len(s) == 2 for s in steps)
    assert [slot.epoch for s in steps for slot in s] == [0, 0, 1, 1]
    for epoch in (0, 1):  # every row once per epoch
        rows = sorted(i for s in steps for slot in s if slot.epoch == epoch for i in slot.rows)
        assert rows == [0, 1, 2, 3]
    fit = Fit([None] * 4, TrainerConfig(batch_size=2, grad_accum=1, epochs=2), "sppo", 1.0, 0, dp=2)
    assert fit.local_slots(fit.steps[0], 1) == [fit.steps[0][1]]


def test_fit_schedule_warms_up_then_decays_to_zero():
    fit = Fit([None] * 10, TrainerConfig(lr=1.0, batch_size=1, warmup_ratio=0.2, schedule="linear"), "sppo", 1.0, 0)
    assert len(fit.steps) == 10 and fit.warmup == 2
    assert [round(fit.lr(s), 4) for s in (0, 1, 2, 3, 9)] == [0.3333, 0.6667, 1.0, 0.875, 0.125]


def test_micro_loss_records_the_epoch_sum_and_step_metrics():
    rows = [PointRow("p", "x", "y", True, 1.0), PointRow("p", "x", "z", True, 0.0)]
    fit = Fit(rows, TrainerConfig(batch_size=2), "sppo", 2.0, 0)
    stats = StepStats()
    pol, ref = torch.tensor([[0.5], [-1.0]]), torch.zeros(2, 1)
    per_row = fit.micro_loss(Slot((0, 1), 0), pol, ref, stats, tokens=7)
    # eq. 3.7 with η = 2: (log-ratio − η(P̂ − ½))² = (0.5 − 1)², (−1 + 1)²
    assert per_row.tolist() == pytest.approx([0.25, 0.0])
    m = fit.end_step(0, 0.1, 3.0, 0.5, stats.totals())
    assert m["loss"] == pytest.approx(0.125) and m["tokens"] == 7
    assert m["log_ratio_mean"] == pytest.approx(-0.25) and m["log_ratio_abs_max"] == pytest.approx(1.0)
    assert m["loss_scaled"] == pytest.approx(0.125 / 4)
    s = fit.summary(1.0)
    assert s["epoch_losses"] == pytest.approx([0.125]) and s["first_loss"] == s["last_loss"] == m["loss"]


def test_sequences_per_row():
    assert sequences_per_row([PointRow("p", "x", "y", True, 0.5)]) == 1
    assert sequences_per_row([PairRow("p", "x", "a", "b", True, True, 0.7)]) == 2


def test_seed_derivation_is_stable_and_separates_tags():
    assert derive_seed(0, "train", 1) == 525316786  # the docstring's hand-checked value
    assert derive_seed(0, "train", 1) != derive_seed(0, "train", 2) != derive_seed(1, "train", 1)
    assert 0 <= derive_seed("anything") < 2 ** 31


def test_a_non_finite_loss_stops_training_naming_the_step():
    from sppo_nemo.maths.training import TrainingDiverged

    rows = [PointRow("p", "x", "y", True, 1.0)]
    fit = Fit(rows, TrainerConfig(batch_size=1), "sppo", 2.0, 0)
    stats = StepStats()
    fit.micro_loss(Slot((0,), 0), torch.tensor([[float("nan")]]), torch.zeros(1, 1), stats, tokens=1)
    with pytest.raises(TrainingDiverged, match="step 0 of 1"):
        fit.end_step(0, 0.1, 1.0, 0.1, stats.totals())


def test_a_non_finite_probe_loss_after_the_only_step_stops_training_naming_it():
    """end_step sees each step's loss before its update; a single step that diverges shows only in
    the probe after it, and is refused the same way, before anything is committed."""
    from sppo_nemo.maths.training import TrainingDiverged

    rows = [PointRow("p", "x", "y", True, 1.0)]
    fit = Fit(rows, TrainerConfig(lr=1e30, batch_size=1), "sppo", 2.0, 0)
    stats = StepStats()
    fit.micro_loss(Slot((0,), 0), torch.zeros(1, 1), torch.zeros(1, 1), stats, tokens=1)
    fit.end_step(0, 1e30, 1.0, 0.1, stats.totals())  # the loss before the update is finite
    with pytest.raises(TrainingDiverged) as info:
        fit.record_probe(torch.tensor([[float("nan")]]), torch.zeros(1, 1))
    assert str(info.value) == (
        "training diverged at optimizer step 0 of 1: after its update the loss on the 1 fixed probe rows is nan (it "
        "was 1 before training; lr 1e+30); nothing of this stage was committed. Lower trainer.lr, raise "
        "trainer.warmup_ratio, or train in fp32 (trainer.precision=fp32).")
    assert fit.probe_losses is None
    fit.record_probe(torch.full((1, 1), 1e6), torch.zeros(1, 1))  # large but finite: a result, not an error
    assert fit.summary(0.0)["probe_loss_after"] > 1e11


def test_the_torch_trainer_commits_nothing_when_its_only_step_diverges(tmp_path):
    """The symptom: trainer.lr=1e30 with one optimizer step trained a policy whose log-probs are NaN and
    saved it; the fixture rows at lr 1e30 give NaN on the tiny Llama (measured)."""
    from pathlib import Path

    from sppo_nemo.backends.torch_trainer import TorchTrainer
    from sppo_nemo.testing import build_tiny_llama
    from sppo_nemo.maths.training import TrainingDiverged

    rows = Path(__file__).resolve().parents[1] / "fixtures" / "rows_sppo.jsonl"
    cfg = TrainerConfig(lr=1e30, warmup_ratio=0.0, batch_size=16, epochs=1, max_prompt_length=32, max_length=64)
    trainer = TorchTrainer(cfg, "sppo", 10.0, None, seed=0, device="cpu")
    with pytest.raises(TrainingDiverged, match=r"^training diverged at optimizer step 0 of 1: after its update the "
                                               r"loss on the 12 fixed probe rows is nan .*Lower trainer.lr"):
        trainer.train(build_tiny_llama(tmp_path / "tiny"), rows, tmp_path / "policy")
    assert not (tmp_path / "policy").exists()


def test_probe_rows_are_fixed_and_scored_before_and_after_hand_worked():
    from sppo_nemo.schema.protocols import PointRow
    from sppo_nemo.maths.training import probe_rows

    assert probe_rows(10, seed=0) == list(range(10))
    big = probe_rows(1000, seed=3)
    assert len(big) == 64 and big == sorted(big) and big == probe_rows(1000, seed=3)
    rows = [PointRow(f"p{i}", "x", "y", True, 1.0) for i in range(4)]
    cfg = TrainerConfig(lr=1.0, batch_size=2, epochs=1)
    fit = Fit(rows, cfg, "sppo", 2.0, seed=0)
    ref = torch.zeros(4, 1)
    # η = 2, P̂ = 1: target η(P̂ − ½) = 1; at π = π_t the loss is 1, at log-ratio +1 it is 0
    fit.record_probe(ref + 1.0, ref)
    s = fit.summary(0.0)
    assert s["probe_rows"] == 4 and s["probe_loss_before"] == pytest.approx(1.0)
    assert s["probe_loss_after"] == pytest.approx(0.0)
    assert s["probe_loss_before_scaled"] == pytest.approx(0.25)
