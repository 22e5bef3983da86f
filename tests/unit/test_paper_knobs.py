"""The knobs the paper's recipes need, with hand-worked numbers: the schedule horizon
(appendix C: 18 epochs scheduled, the first kept), RMSprop (the reference scripts' optimizer), IPO
in the IPO paper's form, winner and loser by the judge's score (section 4.1), the judge's own
scores for the reference win rate, appendix D.3's estimator sample, and keys added later leaving
finished stages valid."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sppo_nemo.maths import preference as P
from sppo_nemo.loading import recipe
from sppo_nemo.formats.artifacts import Stage, canonical
from sppo_nemo.backends import trainer_spec
from sppo_nemo.schema.config import LossConfig, TrainerConfig
from sppo_nemo.schema.errors import StaleStageError
from sppo_nemo.maths.loss import ipo_loss
from sppo_nemo.schema.protocols import Prompt, Sample
from sppo_nemo.stages.build import build_rows
from sppo_nemo.maths.training import Fit, batch_loss, horizon_steps, make_optimizer

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------- schedule horizon
def test_horizon_steps_hand_worked():
    assert horizon_steps(10, 2, 1, 1, 18) == 90  # 5 micro-batches an epoch
    assert horizon_steps(10, 4, 1, 1, 1) == 3  # ceil(10/4)
    assert horizon_steps(10, 2, 2, 2, 3) == 4  # 15 micro-batches, 4 per step → ceil(15/4)


def test_schedule_horizon_learning_rates_hand_worked():
    """10 rows, batch 2, 1 epoch trained of a 3-epoch horizon, warm-up 0.1: horizon 15 steps,
    warm-up round(1.5) = 2 steps; factors (s+1)/3 for s < 2, then 1 − (s − 2)/13."""
    rows = [object()] * 10
    cfg = TrainerConfig(lr=1.0, batch_size=2, epochs=1, schedule_epochs=3, warmup_ratio=0.1, schedule="linear")
    fit = Fit(rows, cfg, "sppo", 1.0, seed=0)
    assert len(fit.steps) == 5 and fit.horizon == 15 and fit.warmup == 2
    lrs = [fit.lr(s) for s in range(5)]
    assert lrs == pytest.approx([1 / 3, 2 / 3, 1.0, 12 / 13, 11 / 13], abs=1e-12)


def test_schedule_horizon_default_is_the_epochs_trained():
    rows = [object()] * 10
    cfg = TrainerConfig(lr=1.0, batch_size=2, epochs=2, warmup_ratio=0.1)
    fit = Fit(rows, cfg, "sppo", 1.0, seed=0)
    assert fit.horizon == len(fit.steps) == 10 and fit.warmup == 1
    assert fit.lr(9) == pytest.approx(1 - 8 / 9)
    same = Fit(rows, replace(cfg, schedule_epochs=2), "sppo", 1.0, seed=0)
    assert [same.lr(s) for s in range(10)] == [fit.lr(s) for s in range(10)]


def test_paper_schedule_keeps_the_first_epoch_inside_warm_up():
    """Appendix C: 18 epochs scheduled with warm-up 0.1 → 1.8 epochs of warm-up, so the epoch trained
    never reaches the peak learning rate (it ends near 0.55 of it)."""
    rows = [object()] * 640  # 10 steps an epoch at global batch 64
    cfg = TrainerConfig(lr=5e-7, batch_size=64, epochs=1, schedule_epochs=18, warmup_ratio=0.1)
    fit = Fit(rows, cfg, "sppo", 1e3, seed=0)
    assert fit.horizon == 180 and fit.warmup == 18
    assert max(fit.lr(s) for s in range(len(fit.steps))) == pytest.approx(5e-7 * 10 / 19)


# ----------------------------------------------------------------------------- RMSprop
def test_rmsprop_one_step_hand_worked_and_equal_to_torch():
    """From v = 0: v = (1 − α) g² = 0.01·4 = 0.04, step lr·g/(√v + ε) = 0.01·2/0.2 = 0.1."""
    cfg = TrainerConfig(lr=0.01, optimizer="rmsprop")
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    q = torch.nn.Parameter(p.detach().clone())
    ours, theirs = make_optimizer([p], cfg), torch.optim.RMSprop([q], lr=0.01)
    assert isinstance(ours, torch.optim.RMSprop)
    for param, opt in ((p, ours), (q, theirs)):
        param.grad = torch.tensor([2.0], dtype=torch.float64)
        opt.step()
    assert p.item() == pytest.approx(1.0 - 0.01 * 2 / (0.2 + 1e-8), abs=1e-15)
    assert p.item() == q.item()
    for param, opt in ((p, ours), (q, theirs)):  # a second step with state
        param.grad = torch.tensor([-1.0], dtype=torch.float64)
        opt.step()
    assert p.item() == q.item()


def test_adamw_is_the_default_optimizer():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = make_optimizer([p], TrainerConfig(lr=1e-3, weight_decay=0.1))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8
    assert opt.defaults["weight_decay"] == 0.1


# ----------------------------------------------------------------------------- IPO forms
def test_ipo_azar_form_hand_worked():
    z = torch.zeros(1)
    # at π = π_ref: B.3 gives 1, azar (η/2)² = 1 for η = 2, 2500 for η = 100
    assert ipo_loss(z, z, z, z, 2.0).item() == pytest.approx(1.0)
    assert ipo_loss(z, z, z, z, 100.0, "azar").item() == pytest.approx(2500.0)
    one = torch.ones(1)
    # log-ratios +1, −1 (Δ = 2), η = 2: B.3 margin ½·2 = 1 → 0; azar (2 − 1)² = 1
    assert ipo_loss(one, -one, z, z, 2.0).item() == pytest.approx(0.0)
    assert ipo_loss(one, -one, z, z, 2.0, "azar").item() == pytest.approx(1.0)
    # azar's minimiser is Δ = η/2 = 1/(2β)
    assert ipo_loss(one * 0.5, -one * 0.5, z, z, 2.0, "azar").item() == pytest.approx(0.0)


@pytest.fixture
def tiny_model(tmp_path, monkeypatch):
    """``${oc.env:SPPO_TINY_MODEL}`` of the CI recipes, a real tiny checkpoint: without it the recipe
    check refuses policy.model unless an earlier test (the integration tier's) had set it."""
    from sppo_nemo.testing import build_tiny_llama

    path = build_tiny_llama(tmp_path / "tiny-llama")
    monkeypatch.setenv("SPPO_TINY_MODEL", str(path))
    return path


def test_batch_loss_dispatches_the_ipo_form_from_the_recipe(tiny_model):
    r = recipe.load(ROOT / "recipes/ci/tiny_ipo.yaml", ["loss.ipo_form=azar"], check_data=False)
    spec = trainer_spec(r, 1)
    assert spec.loss_name == "ipo_azar"
    assert canonical(spec.fingerprint())["loss.ipo_form"] == "azar"
    pol, ref = torch.tensor([[1.0, -1.0]]), torch.zeros(1, 2)
    got = batch_loss(spec.loss_name, 2.0, pol, ref, [None])
    assert got.item() == pytest.approx(1.0)
    assert batch_loss("ipo", 2.0, pol, ref, [None]).item() == pytest.approx(0.0)
    plain = recipe.load(ROOT / "recipes/ci/tiny_sppo.yaml", check_data=False)
    assert "loss.ipo_form" not in canonical(trainer_spec(plain, 1).fingerprint())


# ----------------------------------------------------------------------------- scores and selection
# K = 4 antisymmetric logit differences D (C = D/2, so M = σ(D/2) and s = mean_j D[i, j]):
# A wins hugely against B and loses a little to C and D: highest score, but not the highest P̂.
D = np.array([[0.0, 20.0, -2.0, -2.0],
              [-20.0, 0.0, -1.0, 0.0],
              [2.0, 1.0, 0.0, 0.0],
              [2.0, 0.0, 0.0, 0.0]])
C = D / 2.0


def test_score_and_win_rate_rankings_differ_on_a_hand_worked_matrix():
    m = P.symmetric_probabilities(C)
    s = P.aggregated_scores(C)
    assert s == pytest.approx([16 / 4, -21 / 4, 3 / 4, 2 / 4])
    p_hat = P.win_rate_estimates(m)
    assert p_hat[0] == pytest.approx((0.5 + sig(10) + 2 * sig(-1)) / 4)
    assert p_hat[2] == pytest.approx((sig(1) + sig(0.5) + 1.0) / 4)
    assert P.best_worst(m) == (2, 1)  # by P̂
    assert P.best_worst(m, s, "score") == (0, 1)  # by the judge's score (the paper)
    assert P.best_worst(m, None, "score") == (0, 1)  # read back from M: half the scores, same order
    np.testing.assert_allclose(P.matrix_scores(m), s / 2, atol=1e-9)
    # past the 1e-6 clip (a logit difference over 2·13.8) the matrix has lost the score
    far = P.symmetric_probabilities(np.array([[0.0, 15.0], [-15.0, 0.0]]))
    assert P.matrix_scores(far)[0] < 15.0 / 2 - 0.5


def test_score_diff_win_rates_from_the_judges_scores_match_the_reference_formula():
    """compute_prob.py: P̂_i = mean_j 1 / (1 + exp(s_j − s_i)) with the judge's scores."""
    m = P.symmetric_probabilities(C)
    s = P.aggregated_scores(C)
    ref = [np.mean([1 / (1 + math.exp(s[j] - s[i])) for j in range(4)]) for i in range(4)]
    np.testing.assert_allclose(P.score_diff_win_rates(m, s), ref, atol=1e-12)
    # from the probabilities alone the scores are halved: not the reference's P̂
    assert not np.allclose(P.score_diff_win_rates(m), ref, atol=1e-2)


def test_estimator_sample_hand_worked():
    assert P.estimator_sample(5, 3, 1, 3) == [3, 1, 0]
    assert P.estimator_sample(5, 3, 1, 2) == [3, 1]
    assert P.estimator_sample(5, 3, 1, None) == [0, 1, 2, 3, 4]
    assert P.estimator_sample(5, 0, 4, 5) == [0, 1, 2, 3, 4]


def _prompt_rows(loss: LossConfig, scores=None):
    prompts = [Prompt("p0", "x")]
    samples = [[Sample("p0", k, f"y{k}", 3, True) for k in range(4)]]
    m = P.symmetric_probabilities(C)
    return build_rows(prompts, samples, [m], loss, 1000.0, [scores] if scores is not None else None), m


def test_build_rows_rank_by_score_and_estimator_sample_of_two():
    s = P.aggregated_scores(C)
    rows, m = _prompt_rows(LossConfig(selection="best_worst", rank_by="score", estimator_samples=2), s)
    assert [r.response for r in rows] == ["y0", "y1"]
    # appendix D.3, K = 2: P̂(y_w) = (½ + P(y_w ≻ y_l)) / 2
    assert rows[0].win_prob == pytest.approx((0.5 + m[0, 1]) / 2)
    assert rows[1].win_prob == pytest.approx((0.5 + m[1, 0]) / 2)
    full, _ = _prompt_rows(LossConfig(selection="best_worst", rank_by="score"), s)
    assert full[0].win_prob == pytest.approx(P.win_rate_estimates(m)[0])
    by_win_rate, _ = _prompt_rows(LossConfig(selection="best_worst"), s)
    assert [r.response for r in by_win_rate] == ["y2", "y1"]


def test_build_rows_score_diff_uses_the_judges_scores_when_given():
    s = P.aggregated_scores(C)
    rows, m = _prompt_rows(LossConfig(winrate="score_diff"), s)
    np.testing.assert_allclose([r.win_prob for r in rows], P.score_win_rates(s), atol=1e-12)
    rows_m, _ = _prompt_rows(LossConfig(winrate="score_diff"))
    np.testing.assert_allclose([r.win_prob for r in rows_m], P.score_win_rates(P.matrix_scores(m)), atol=1e-12)


def test_annotate_keeps_the_judges_scores_from_a_real_pairrm(tmp_path):
    from sppo_nemo.backends.pairrm.checkpoint import save_pairrm  # noqa: F401  (the tiny PairRM's module)
    from sppo_nemo.backends.pairrm.judge import PairRMJudge
    from sppo_nemo.backends.pairrm.tokenizer import load_pairrm_tokenizer
    from sppo_nemo.testing.pairrm import random_pairrm, save_test_tokenizer, train_test_tokenizer

    tok = train_test_tokenizer(["one two three four five six why how"] * 20, vocab_size=120)
    tokens = load_pairrm_tokenizer(save_test_tokenizer(tok, tmp_path / "tok"))
    judge = PairRMJudge.from_model(random_pairrm(tokens.vocab_size, "tiny", seed=0), tokens, device="cpu")
    prompts, responses = [Prompt("p", "why")], [["one two", "three", "four five six"]]
    (m, s), = judge.scored_matrices(prompts, responses)
    np.testing.assert_allclose(m, judge.preference_matrices(prompts, responses)[0], atol=1e-12)
    np.testing.assert_allclose(s, P.aggregated_scores(judge.logit_matrices(prompts, responses)[0]), atol=1e-12)


# ----------------------------------------------------------------------------- recipe checks
@pytest.mark.parametrize("overrides, key", [
    (["trainer.backend=megatron", "trainer.optimizer=rmsprop"], "trainer.optimizer"),
    (["trainer.schedule_epochs=1", "trainer.epochs=2"], "trainer.schedule_epochs"),
    (["loss.rank_by=score"], "loss.rank_by"),
    (["loss.estimator_samples=2"], "loss.estimator_samples"),
    (["loss.selection=best_worst", "loss.estimator_samples=9"], "loss.estimator_samples"),
    (["loss.selection=best_worst", "loss.estimator_samples=2", "loss.winrate=score_diff"], "loss.estimator_samples"),
    (["loss.ipo_form=azar"], "loss.ipo_form"),
])
def test_bad_knob_combinations_are_refused_by_key(overrides, key):
    with pytest.raises(recipe.RecipeError) as e:
        recipe.load(ROOT / "recipes/ci/tiny_sppo.yaml", overrides, check_data=False)
    assert any(p.startswith(key) for p in e.value.problems), e.value.problems


# ----------------------------------------------------------------------------- keys added later
def test_a_key_a_finished_stage_lacks_makes_it_stale_naming_the_key(tmp_path):
    """One run-directory format (artifacts.FORMAT): a stage of this format has every key; one whose
    fingerprint lacks a key the recipe now sets differs in that key, named, never guessed at."""
    stage = Stage(tmp_path / "iter_01" / "train")
    old = {"trainer": {"lr": 1e-6, "epochs": 1}, "loss.type": "sppo"}
    stage.begin(old)
    stage.commit(old, started=0.0)
    stage.check(old, tmp_path)
    with pytest.raises(StaleStageError, match="trainer.optimizer: was '<absent>', now 'adamw'"):
        stage.check({"trainer": {"lr": 1e-6, "epochs": 1, "optimizer": "adamw"}, "loss.type": "sppo"}, tmp_path)

