"""CI regression recipes (recipes/ci/): each must learn, measurably, and match stored expectations.

Learning, checked on the run itself, so that a policy that learned nothing fails whatever is stored:

- every iteration's training loss falls: last epoch ≤ LOSS_FALL × first epoch;
- the last policy beats π_1 on the held-out prompts: win rate ≥ MIN_WIN, with its 95% interval
  entirely above ½;
- it gives the prompts' answer (every prompt of recipes/ci/prompts.jsonl has the answer 7) in a
  share of the held-out samples at least ANSWER_GAIN above π_1's.

Regression: the metrics match tests/integration/expected/<recipe>.json within tolerances.
To refresh the expectations after an intended change (they are written only for runs that pass
the learning checks):

    SPPO_UPDATE_EXPECTED=1 .venv/bin/python -m pytest -q tests/integration/test_ci_regression.py

then review the diff of tests/integration/expected/ in the commit.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.helpers import RECIPES, read_json, read_jsonl, sppo_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPECTED = Path(__file__).parent / "expected"
CI = sorted((RECIPES / "ci").glob("*.yaml"))
ANSWERS = {row["id"]: row["answer"] for row in read_jsonl(RECIPES / "ci" / "prompts.jsonl")}

# Learning: π_1 wins ½ against itself and gives the answer in a few held-out samples (2 to 15%).
LOSS_FALL = 0.5
MIN_WIN = 0.6
ANSWER_GAIN = 0.15
# Regression: stochastic sampling on CPU is bit-reproducible on one machine; the tolerances absorb
# BLAS differences between CPUs without letting a real change through.
LOSS_RTOL = 0.05
WIN_ATOL = 0.04
ANSWER_ATOL = 0.1  # a fraction of 48 held-out samples: 1/48 a sample


def says(text: str, answer: str) -> bool:
    """The response states ``answer`` as a whole number: "7 cars" and "is 7." do, "17" and "7.5" do not."""
    return re.search(rf"(?<![\w.]){re.escape(answer)}(?!\d|[.,]\d)", text) is not None


def answer_fraction(responses: Path) -> float:
    samples = [(row["prompt_id"], s["text"]) for row in read_jsonl(responses) for s in row["samples"]]
    return sum(says(text, ANSWERS[pid]) for pid, text in samples) / len(samples)


def collect(run: Path) -> dict:
    """Per iteration: epoch losses, build summary, held-out win rates (with intervals), length, answers."""
    out = {}
    for it in sorted(run.glob("iter_*")):
        row = {}
        train = it / "train" / "summary.json"
        if train.exists():
            row["epoch_losses"] = read_json(train)["epoch_losses"]
        build = it / "build" / "manifest.json"
        if build.exists():
            row["build"] = {k: v for k, v in read_json(build)["result"].items() if isinstance(v, (int, float))}
        m = read_json(it / "evaluate" / "metrics.json")
        row["mean_tokens"] = m["mean_tokens"]
        row["answer_fraction"] = answer_fraction(it / "evaluate" / "responses.jsonl")
        if "win_rate_vs_base" in m:  # every iteration but 0 (π_1 itself)
            for k in ("win_rate_vs_base", "win_rate_vs_base_ci", "win_rate_vs_previous"):
                row[k] = m[k]
        out[it.name] = row
    return out


def assert_learned(name: str, got: dict) -> None:
    """The learning checks of the module docstring, on ``collect``'s result."""
    iters = sorted(got)
    assert iters[0] == "iter_00" and len(iters) >= 2, f"{name}: no trained iteration in {iters}"
    for it in iters[1:]:
        first, last = got[it]["epoch_losses"][0], got[it]["epoch_losses"][-1]
        assert last <= LOSS_FALL * first, f"{name} {it}: training loss fell only {first:.4g} → {last:.4g}"
    final = got[iters[-1]]
    win, (lo, hi) = final["win_rate_vs_base"], final["win_rate_vs_base_ci"]
    assert win >= MIN_WIN and lo > 0.5, (
        f"{name} {iters[-1]}: win rate against π_1 {win:.3f} [{lo:.3f}, {hi:.3f}]; learning needs "
        f"≥ {MIN_WIN} with the interval above 0.5")
    base, now = got["iter_00"]["answer_fraction"], final["answer_fraction"]
    assert now - base >= ANSWER_GAIN, (
        f"{name} {iters[-1]}: the answer in {now:.3f} of held-out samples, π_1 {base:.3f}; "
        f"learning needs {ANSWER_GAIN} more")


def assert_matches(name: str, got: dict, want: dict) -> None:
    assert got.keys() == want.keys(), name
    for it, w in want.items():
        g = got[it]
        assert g.keys() == w.keys(), (name, it)
        assert g["mean_tokens"] == pytest.approx(w["mean_tokens"], rel=0.1), (name, it)
        assert g["answer_fraction"] == pytest.approx(w["answer_fraction"], abs=ANSWER_ATOL), (name, it)
        if "epoch_losses" in w:
            assert g["epoch_losses"] == pytest.approx(w["epoch_losses"], rel=LOSS_RTOL), (name, it)
            assert g["build"] == pytest.approx(w["build"], rel=1e-3, abs=1e-6), (name, it)
            for k in ("win_rate_vs_base", "win_rate_vs_previous"):
                assert g[k] == pytest.approx(w[k], abs=WIN_ATOL), (name, it, k)


@pytest.mark.parametrize("recipe", CI, ids=[r.stem for r in CI])
def test_ci_recipe_learns_and_matches_expectations(recipe: Path, tiny_model, reference_run, tmp_path):
    if recipe.stem == "tiny_sppo":
        run = reference_run
    else:
        sppo_run(tiny_model, recipe, f"output_dir={tmp_path}")
        run = tmp_path / recipe.stem
    got = collect(run)
    assert_learned(recipe.stem, got)

    path = EXPECTED / f"{recipe.stem}.json"
    if os.environ.get("SPPO_UPDATE_EXPECTED") == "1":
        path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"wrote {path}")
    assert_matches(recipe.stem, got, json.loads(path.read_text()))
