"""Every shipped preference game × method through the real loop, against the exact update.

For each game file ``recipes/games/<game>.json`` (rock-paper-scissors; a generalized intransitive
game whose equilibrium is not uniform; a transitive Bradley-Terry game) it runs the recipes
``<game>_sppo.yaml``, ``<game>_dpo.yaml`` and ``<game>_ipo.yaml`` with the ordinary sppo-run loop
(in this process; resumable, so a rerun only reads the finished stages), computes the exact
multiplicative-weight update (eq. 3.1, sppo_nemo.maths.games.mwu) from the same π_1 with the same η as
the idealised reference, and writes

- ``<out>/<game>.png``: duality gap against the number of policies T (log-log), the average
  policy π̄_T (solid) and the last one π_T (dotted) of each method, with a c/√T line;
- ``<out>/table.md``: the final duality gaps and distances to the Nash equilibrium;

and prints the table. The duality gap is max_y P(y ≻ π) − min_y P(π ≻ y) (appendix F; see
sppo_nemo/maths/games.py). Iteration t of the loop evaluates π_{t+1}, so after T iterations the
average policy mixes T + 1 policies π_1..π_{T+1}.

    .venv/bin/python benchmarks/games_suite.py [--T 64] [--out runs/games_suite] [--games rps ...]

About 30 s on 2 cores with --out on a RAM disk (e.g. /dev/shm/games_suite); about 2 minutes on a
disk, where the fsync of every stage commit dominates. Runs are deterministic (seed 0).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sppo_nemo.maths import games  # noqa: E402
from sppo_nemo.loading import recipe as recipe_mod  # noqa: E402

RECIPES = ROOT / "recipes" / "games"
GAMES = {
    "rps": "rock-paper-scissors (uniform equilibrium)",
    "intransitive": "weighted cycle + decoy (equilibrium 2/7, 1/7, 4/7, 0)",
    "transitive": "Bradley-Terry order (equilibrium: the top response)",
}
METHODS = ("sppo", "dpo", "ipo")


def run_loop(path: Path, overrides: list[str]) -> list[dict]:
    """Run one recipe with the ordinary loop (resuming what is finished); metrics per iteration."""
    from sppo_nemo.stages.context import Context
    from sppo_nemo.run.runner import execute, run_dir_for
    from sppo_nemo.stages.evaluate import read_metrics

    r = recipe_mod.load(path, overrides)
    ctx = Context(r, run_dir_for(r), progress=False)
    execute(ctx, log=lambda *a: None)
    return [read_metrics(ctx, t) for t in range(r.T + 1)]


def exact_reference(path: Path, overrides: list[str]) -> dict[str, np.ndarray]:
    """Gaps of the exact update (3.1) from the recipe's π_1 with the recipe's η, T + 1 policies."""
    from sppo_nemo.backends.game_file import load_game

    r = recipe_mod.load(path, overrides)
    g = load_game(r.game)
    pis = games.mwu(g.matrix, g.init, r.eta, r.T)
    avg = games.running_average(pis)
    return {
        "duality_gap": games.gaps(g.matrix, pis),
        "duality_gap_avg": games.gaps(g.matrix, avg),
        "nash_tv": np.array([games.nash_distance(g.matrix, x)[0] for x in pis]),
        "nash_tv_avg": np.array([games.nash_distance(g.matrix, x)[0] for x in avg]),
    }


def curves(metrics: list[dict]) -> dict[str, np.ndarray]:
    keys = ("duality_gap", "duality_gap_avg", "nash_tv", "nash_tv_avg")
    return {k: np.array([m[k] for m in metrics]) for k in keys}


def plot(game: str, results: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    floor = 1e-4
    colors = {"mwu (exact)": "black", "sppo": "tab:blue", "dpo": "tab:red", "ipo": "tab:green"}
    for method, c in results.items():
        x = np.arange(1, len(c["duality_gap"]) + 1)
        color = colors.get(method)
        ax.plot(x, np.maximum(c["duality_gap_avg"], floor), color=color, lw=1.8, label=f"{method}: average π̄_T")
        ax.plot(x, np.maximum(c["duality_gap"], floor), color=color, lw=0.9, ls=":", label=f"{method}: last π_T")
    ref = results["mwu (exact)"]["duality_gap_avg"]
    x = np.arange(1, len(ref) + 1)
    ax.plot(x, ref[0] / np.sqrt(x), color="grey", ls="--", lw=1.0, label=f"{ref[0]:.2f}/√T")
    ax.set_xscale("log")
    ax.set_yscale("log")
    lowest = min(float(np.min(c[k])) for c in results.values() for k in ("duality_gap", "duality_gap_avg"))
    ax.set_ylim(bottom=max(floor, lowest) * 0.7)
    ax.set_xlabel("policies T (π_1 … π_T; iteration T − 1 of the loop)")
    ax.set_ylabel("duality gap")
    ax.set_title(f"{game}: {GAMES.get(game, '')}", fontsize=9)
    ax.legend(fontsize=6.5, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=None, help="iterations (default: the recipes' T)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "games_suite", help="runs, plots and table")
    ap.add_argument("--games", nargs="*", default=list(GAMES), choices=list(GAMES))
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    overrides = [f"output_dir={args.out.resolve()}"] + ([f"T={args.T}"] if args.T else [])
    lines = ["| game | method | gap last π_T | gap average π̄_T | TV to Nash, last | TV to Nash, average | seconds |",
             "|---|---|---|---|---|---|---|"]
    started = time.time()
    for game in args.games:
        results: dict[str, dict[str, np.ndarray]] = {}
        t0 = time.time()
        results["mwu (exact)"] = exact_reference(RECIPES / f"{game}_sppo.yaml", overrides)
        seconds = {"mwu (exact)": time.time() - t0}
        for method in args.methods:
            t0 = time.time()
            results[method] = curves(run_loop(RECIPES / f"{game}_{method}.yaml", overrides))
            seconds[method] = time.time() - t0
        for method, c in results.items():
            lines.append(f"| {game} | {method} | {c['duality_gap'][-1]:.4f} | {c['duality_gap_avg'][-1]:.4f} | "
                         f"{c['nash_tv'][-1]:.4f} | {c['nash_tv_avg'][-1]:.4f} | {seconds[method]:.1f} |")
        if not args.no_plot:
            plot(game, results, args.out / f"{game}.png")
    T = len(next(iter(results.values()))["duality_gap"]) - 1
    table = "\n".join(lines)
    note = (f"\nAfter T = {T} iterations (T + 1 policies). Duality gap = max_y P(y ≻ π) − min_y P(π ≻ y) "
            f"(appendix F); TV = total-variation distance to the nearest Nash equilibrium (LP).\n")
    (args.out / "table.md").write_text(table + "\n" + note)
    print(table)
    print(note)
    print(f"{time.time() - started:.0f}s; plots and table in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
