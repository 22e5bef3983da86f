"""CI regression recipes (recipes/ci/): their metrics must match stored expectations within
tolerances, and training must fit its own objective, so a change that breaks learning fails.

To refresh the expectations after an intended change: SPPO_UPDATE_EXPECTED=1 pytest this file,
then review the diff of tests/integration/expected/ in the commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import ROOT, sppo_run

pytestmark = pytest.mark.slow

EXPECTED = Path(__file__).parent / "expected"
RECIPES = sorted((ROOT / "recipes" / "ci").glob("*.yaml"))
# Stochastic sampling on CPU is bit-reproducible on one machine; the tolerances absorb BLAS
# differences between CPUs without letting a real change through.
LOSS_RTOL = 0.05
WIN_ATOL = 0.04


def collect(run: Path) -> dict:
    out = {}
    for it in sorted(run.glob("iter_*")):
        row = {}
        train = it / "train" / "summary.json"
        if train.exists():
            s = json.loads(train.read_text())
            row["epoch_losses"] = s["epoch_losses"]
        ev = it / "evaluate" / "metrics.json"
        if ev.exists():
            m = json.loads(ev.read_text())
            row.update({k: m[k] for k in ("win_rate_vs_base", "win_rate_vs_previous", "mean_tokens") if k in m})
        build = it / "build" / "manifest.json"
        if build.exists():
            r = json.loads(build.read_text())["result"]
            row["build"] = {k: v for k, v in r.items() if isinstance(v, (int, float))}
        out[it.name] = row
    return out


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_ci_recipe_matches_expectations(recipe: Path, tiny_model, reference_run, tmp_path):
    if recipe.stem == "tiny_sppo":
        run = reference_run
    else:
        sppo_run(tiny_model, recipe, f"output_dir={tmp_path}")
        run = tmp_path / recipe.stem
    got = collect(run)

    # Learning: within every iteration the loss over the last epoch is below the first epoch's.
    for it, row in got.items():
        if "epoch_losses" in row:
            first, last = row["epoch_losses"][0], row["epoch_losses"][-1]
            assert last < 0.95 * first, f"{recipe.stem} {it}: training did not fit ({first} → {last})"

    path = EXPECTED / f"{recipe.stem}.json"
    if os.environ.get("SPPO_UPDATE_EXPECTED") == "1":
        path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"wrote {path}")
    want = json.loads(path.read_text())
    assert got.keys() == want.keys()
    for it in want:
        w, g = want[it], got[it]
        if "epoch_losses" in w:
            assert g["epoch_losses"] == pytest.approx(w["epoch_losses"], rel=LOSS_RTOL), it
        for k in ("win_rate_vs_base", "win_rate_vs_previous"):
            if k in w:
                assert g[k] == pytest.approx(w[k], abs=WIN_ATOL), (it, k)
        if "mean_tokens" in w:
            assert g["mean_tokens"] == pytest.approx(w["mean_tokens"], rel=0.1), it
        if "build" in w:
            assert g["build"] == pytest.approx(w["build"], rel=1e-3, abs=1e-6), it
