"""report.md, winrate.png and the per-iteration table printed at the end of a run."""

from __future__ import annotations

from sppo_nemo.artifacts import read_json
from sppo_nemo.context import Context


def collect(ctx: Context) -> list[dict]:
    """One dict per iteration with the figures a reader wants, from finished stages only."""
    out = []
    for t in range(0, ctx.recipe.T + 1):
        row: dict = {"iteration": t}
        ev = ctx.stage(t, "evaluate")
        if ev.done():
            row.update(read_json(ev.path / "metrics.json"))
        if t >= 1:
            tr = ctx.stage(t, "train")
            if tr.done():
                s = read_json(tr.path / "summary.json")
                row.update({f"train_{k}": v for k, v in s.items()})
            seconds = {}
            for name in ("generate", "annotate", "build", "train", "evaluate"):
                st = ctx.stage(t, name)
                if st.done():
                    seconds[name] = st.manifest()["seconds"]
            row["seconds"] = seconds
        out.append(row)
    return out


def _fmt(v, digits=3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ci(row: dict, key: str) -> str:
    if key not in row:
        return "–"
    lo, hi = row[f"{key}_ci"]
    return f"{row[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def table(rows: list[dict]) -> str:
    header = ("| iter | policy | win vs π_1 [95% CI] | win vs π_t [95% CI] | mean tokens | finished | "
              "KL(π‖π_1) | loss first→last (scaled) | seconds |")
    exact = any("duality_gap" in r for r in rows)  # the game backends evaluate exactly
    if exact:
        header += " duality gap π_{t+1} | duality gap π̄ | TV to Nash π̄ |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in rows:
        t = r["iteration"]
        loss = "–"
        if r.get("train_first_loss_scaled") is not None:
            loss = f"{r['train_first_loss_scaled']:.4f}→{r['train_last_loss_scaled']:.4f}"
        elif r.get("train_first_loss") is not None:
            loss = f"{r['train_first_loss']:.4f}→{r['train_last_loss']:.4f}"
        secs = sum(r.get("seconds", {}).values())
        lines.append(
            f"| {t} | π_{t + 1} | {_ci(r, 'win_rate_vs_base')} | {_ci(r, 'win_rate_vs_previous')} | "
            f"{_fmt(r.get('mean_tokens'), 1)} | {_fmt(r.get('finished_fraction'), 2)} | {_fmt(r.get('kl_to_base'))} | "
            f"{loss} | {secs:.0f} |"
            + (f" {_fmt(r.get('duality_gap'), 4)} | {_fmt(r.get('duality_gap_avg'), 4)} | "
               f"{_fmt(r.get('nash_tv_avg'), 4)} |" if exact else "")
        )
    return "\n".join(lines)


def plot(ctx: Context, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if "win_rate_vs_base" in r]
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for key, label in (("win_rate_vs_base", "vs π_1 (base)"), ("win_rate_vs_previous", "vs π_t (previous)")):
        xs = [r["iteration"] for r in pts]
        ys = [r[key] for r in pts]
        lo = [r[key] - r[f"{key}_ci"][0] for r in pts]
        hi = [r[f"{key}_ci"][1] - r[key] for r in pts]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("SPPO iteration t (policy π_{t+1})")
    ax.set_ylabel("held-out win rate")
    ax.set_xticks([r["iteration"] for r in pts])
    ax.set_title(f"{ctx.recipe.name}: judge {ctx.recipe.judge.backend}, 95% CI")
    ax.legend()
    fig.tight_layout()
    fig.savefig(ctx.run_dir / "winrate.png")
    plt.close(fig)


def write_report(ctx: Context) -> str:
    rows = collect(ctx)
    r = ctx.recipe
    text = "\n".join([
        f"# {r.name}",
        "",
        f"SPPO run: loss `{r.loss.type}`, η = {r.eta:g}, K = {r.K}, T = {r.T}, selection `{r.loss.selection}`, "
        f"judge `{r.judge.backend}`, policy `{r.policy.model}`.",
        f"Held-out prompts: {len(ctx.splits.eval)}; prompts per iteration: {r.data.split_size}.",
        "",
        table(rows),
        "",
        "Win rates are the judge's mean P(π_{t+1} ≻ opponent) over held-out prompts with a percentile-bootstrap "
        "95% interval; KL is the mean sampled log-ratio log π_{t+1}(y|x) − log π_1(y|x), y ~ π_{t+1}. "
        "Scaled loss is the square loss divided by η² (appendix B units).",
        "",
        "![win rates](winrate.png)",
        "",
    ])
    (ctx.run_dir / "report.md").write_text(text)
    plot(ctx, rows)
    return table(rows)
