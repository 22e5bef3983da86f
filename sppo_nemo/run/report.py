"""report.md, winrate.png, length.png and the per-iteration table printed at the end of a run.

Columns and sections that only some recipes produce appear only when present: the exact game
figures, best-of-n (evaluation.best_of), AlpacaEval 2.0 (evaluation.alpaca_eval), lm-eval's tasks (evaluation.lm_eval, with lm_eval.png),
the AlpacaEval output files, and the cost estimate
(``<run dir>/estimate.md``, written at run start)."""

from __future__ import annotations

from sppo_nemo.formats.artifacts import read_json
from sppo_nemo.stages.context import Context
from sppo_nemo.loading.precision import recorded_note


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


def _kl(row: dict) -> str:
    """The two KL estimates; a run evaluated before the exact one existed has the log-ratio alone,
    under the key the exact one now has."""
    if "kl_to_base_log_ratio" in row:
        return f"{_ci(row, 'kl_to_base')} | {_ci(row, 'kl_to_base_log_ratio')}"
    return f"– | {_ci(row, 'kl_to_base')}" if "kl_to_base_ci" in row else "– | –"


def table(rows: list[dict]) -> str:
    header = ("| iter | policy | win vs π_1 [95% CI] | win vs π_t [95% CI] | mean tokens | finished | "
              "KL(π‖π_1) [95% CI] | log-ratio [95% CI] | loss before→after (scaled) | seconds |")
    exact = any("duality_gap" in r for r in rows)  # the game backends evaluate exactly
    if exact:
        header += " duality gap π_{t+1} | duality gap π̄ | TV to Nash π̄ |"
    best = [r["best_of"] for r in rows if "best_of" in r]  # evaluation.best_of
    if best:
        header += f" best-of-{best[0]} vs π_1 [95% CI] | best-of-{best[0]} tokens |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in rows:
        t = r["iteration"]
        loss = "–"
        if r.get("train_probe_loss_before_scaled") is not None:
            loss = f"{r['train_probe_loss_before_scaled']:.4f}→{r['train_probe_loss_after_scaled']:.4f}"
        elif r.get("train_probe_loss_before") is not None:
            loss = f"{r['train_probe_loss_before']:.4f}→{r['train_probe_loss_after']:.4f}"
        elif r.get("train_first_loss_scaled") is not None:
            loss = f"{r['train_first_loss_scaled']:.4f}→{r['train_last_loss_scaled']:.4f}"
        elif r.get("train_first_loss") is not None:
            loss = f"{r['train_first_loss']:.4f}→{r['train_last_loss']:.4f}"
        secs = sum(r.get("seconds", {}).values())
        lines.append(
            f"| {t} | π_{t + 1} | {_ci(r, 'win_rate_vs_base')} | {_ci(r, 'win_rate_vs_previous')} | "
            f"{_fmt(r.get('mean_tokens'), 1)} | {_fmt(r.get('finished_fraction'), 2)} | {_kl(r)} | "
            f"{loss} | {secs:.0f} |"
            + (f" {_fmt(r.get('duality_gap'), 4)} | {_fmt(r.get('duality_gap_avg'), 4)} | "
               f"{_fmt(r.get('nash_tv_avg'), 4)} |" if exact else "")
            + (f" {_ci(r, 'win_rate_best_of_vs_base')} | {_fmt(r.get('best_of_mean_tokens'), 1)} |" if best else "")
        )
    return "\n".join(lines)


def _n(rows: list[dict]) -> str:
    return next((str(r["best_of"]) for r in rows if "best_of" in r), "n")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(ctx: Context, rows: list[dict]) -> None:
    """winrate.png: win rates per iteration with their 95% intervals (best-of-n too when run)."""
    series = [(key, label) for key, label in (("win_rate_vs_base", "vs π_1 (base)"),
                                              ("win_rate_vs_previous", "vs π_t (previous)"),
                                              ("win_rate_best_of_vs_base", f"best-of-{_n(rows)} vs π_1"))
              if any(key in r for r in rows)]
    if not any(key == "win_rate_vs_base" for key, _ in series):
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for key, label in series:
        pts = [r for r in rows if key in r]
        xs = [r["iteration"] for r in pts]
        ys = [r[key] for r in pts]
        lo = [r[key] - r[f"{key}_ci"][0] for r in pts]
        hi = [r[f"{key}_ci"][1] - r[key] for r in pts]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("SPPO iteration t (policy π_{t+1})")
    ax.set_ylabel("held-out win rate")
    ax.set_xticks(sorted({r["iteration"] for r in rows if any(key in r for key, _ in series)}))
    ax.set_title(f"{ctx.recipe.name}: judge {ctx.recipe.judge.backend}, 95% CI")
    ax.legend()
    fig.tight_layout()
    fig.savefig(ctx.run_dir / "winrate.png")
    plt.close(fig)


def plot_length(ctx: Context, rows: list[dict]) -> bool:
    """length.png: mean response tokens per iteration (and of the best-of-n outputs when run);
    False when no iteration has been evaluated yet."""
    series = [(key, label) for key, label in (("mean_tokens", "held-out samples"),
                                              ("best_of_mean_tokens", f"best-of-{_n(rows)} outputs"))
              if any(key in r for r in rows)]
    if not series:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=120)
    for key, label in series:
        pts = [r for r in rows if key in r]
        ax.plot([r["iteration"] for r in pts], [r[key] for r in pts], marker="o", label=label)
    ax.set_xlabel("SPPO iteration t (policy π_{t+1})")
    ax.set_ylabel("mean response tokens")
    ax.set_xticks(sorted({r["iteration"] for r in rows if "mean_tokens" in r}))
    ax.set_title(f"{ctx.recipe.name}: response length")
    ax.legend()
    fig.tight_layout()
    fig.savefig(ctx.run_dir / "length.png")
    plt.close(fig)
    return True


def alpaca_eval_section(rows: list[dict]) -> list[str]:
    """AlpacaEval 2.0's win rates per policy, naming the judge and the reference of each."""
    runs = [r for r in rows if "alpaca_eval_lc_win_rate" in r]
    if not runs:
        return []
    lines = ["## AlpacaEval 2.0", "", "| policy | LC win rate % | win rate % ± s.e. | judged | unparsed | reference | judge |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| π_{r['iteration'] + 1} | {r['alpaca_eval_lc_win_rate']:.1f} | {r['alpaca_eval_win_rate']:.1f} ± "
                     f"{r['alpaca_eval_standard_error']:.1f} | {r['alpaca_eval_judged']} | {r['alpaca_eval_unparsed']} | "
                     f"{r['alpaca_eval_reference']} | {r['alpaca_eval_judge']} |")
    return lines + ["", "The judge reads AlpacaEval 2.0's prompt and its preference is P(policy's output better) from "
                    "its first-token log-probabilities; the LC win rate is AlpacaEval's length-controlled GLM (its "
                    "minimal form) fitted on them. Only GPT-4 Turbo against AlpacaEval's reference outputs on its 805 "
                    "instructions gives the paper's Table 1 numbers; any other judge or reference gives a number "
                    "of its own. Per-instruction judgements: `iter_XX/evaluate/alpaca_eval_annotations.json`.", ""]


def lm_eval_section(rows: list[dict]) -> list[str]:
    """lm-eval's headline number per task and policy, ± lm-eval's own standard error."""
    runs = [r for r in rows if "lm_eval" in r]
    if not runs:
        return []
    tasks = list(dict.fromkeys(t for r in runs for t in r["lm_eval"]))
    head = "| task | metric | shots | documents | " + " | ".join(f"π_{r['iteration'] + 1}" for r in runs) + " |"
    lines = [f"## lm-eval (lm-evaluation-harness {runs[-1].get('lm_eval_version')})", "", head,
             "|" + "---|" * (4 + len(runs))]
    for t in tasks:
        info = next(r["lm_eval"][t] for r in runs if t in r["lm_eval"])
        cells = []
        for r in runs:
            v, err = r.get(f"lm_eval_{t}"), r.get(f"lm_eval_{t}_stderr")
            cells.append("–" if v is None else f"{v:.3f}" + (f" ± {err:.3f}" if err is not None else ""))
        lines.append(f"| {t} | {(info.get('metric') or '–').replace(',none', '')} | {info.get('num_fewshot')} | "
                     f"{info.get('samples')} | " + " | ".join(cells) + " |")
    return lines + ["", "Each number is lm-eval's own metric on the policy (π_1 at iteration 0, π_{t+1} at iteration "
                    "t) ± its standard error; no judge is involved. All metrics per task are in each "
                    "`iter_XX/evaluate/metrics.json` under `lm_eval`.", "", "![lm-eval](lm_eval.png)", ""]


def plot_lm_eval(ctx: Context, rows: list[dict]) -> None:
    """lm_eval.png: each task's headline number per policy with its standard error."""
    runs = [r for r in rows if "lm_eval" in r]
    if not runs:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for t in dict.fromkeys(t for r in runs for t in r["lm_eval"]):
        pts = [r for r in runs if f"lm_eval_{t}" in r]
        ax.errorbar([r["iteration"] for r in pts], [r[f"lm_eval_{t}"] for r in pts],
                    yerr=[r.get(f"lm_eval_{t}_stderr") or 0.0 for r in pts], marker="o", capsize=3, label=t)
    ax.set_xlabel("SPPO iteration t (policy π_{t+1})")
    ax.set_ylabel("lm-eval score (± standard error)")
    ax.set_xticks([r["iteration"] for r in runs])
    ax.set_title(f"{ctx.recipe.name}: lm-eval")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(ctx.run_dir / "lm_eval.png")
    plt.close(fig)


def outputs_section(ctx: Context, rows: list[dict]) -> list[str]:
    """The AlpacaEval files of the finished evaluations, for `alpaca_eval evaluate --model_outputs`."""
    files = []
    for r in rows:
        ev = ctx.stage(r["iteration"], "evaluate")
        if ev.done():
            files += [f"`{p.relative_to(ctx.run_dir)}`" for name in ("model_outputs.json", "best_of_outputs.json",
                                                                       "alpaca_eval_outputs.json")
                      if (p := ev.path / name).exists()]
    if not files:
        return []
    return ["## AlpacaEval outputs", "",
            "Generators are named `<run name>-iter<t>` (iter0: the base policy π_1; best-of-n adds `-best-of-<n>`); "
            "held-out outputs carry dataset `sppo-heldout`. Files: " + ", ".join(files) + ".", ""]


def cost_section(ctx: Context) -> list[str]:
    """The run's cost estimate, as written at run start (<run dir>/estimate.md), when there is one."""
    path = ctx.run_dir / "estimate.md"
    if not path.is_file():
        return []
    return ["## Cost estimate", "", *nested(path.read_text(encoding="utf-8")), ""]


def nested(markdown: str) -> list[str]:
    """A markdown document as a section of the report: its title line (``# ...``) dropped and every
    other heading one level down, so ``## One iteration`` becomes ``### One iteration``."""
    lines = markdown.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    out, fenced = [], False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        out.append("#" + line if line.startswith("#") and not fenced else line)
    while out and not out[0].strip():
        out.pop(0)
    return out


def write_report(ctx: Context) -> str:
    rows = collect(ctx)
    r = ctx.recipe
    have_length = any("mean_tokens" in row for row in rows)
    text = "\n".join([
        f"# {r.name}",
        "",
        f"SPPO run: loss `{r.loss.type}`, η = {r.eta:g}, K = {r.K}, T = {r.T}, selection `{r.loss.selection}`, "
        f"judge `{r.judge.backend}`, policy `{r.policy.model}`.",
        f"Held-out prompts: {len(ctx.splits.eval)}; prompts per iteration: {r.data.split_size}.",
        f"Precision: generation `{r.generation.precision}`, trainer `{r.trainer.precision}`, "
        f"KL log-probs `{r.evaluation.kl_precision}`." + (f" ({note})" if (note := recorded_note(ctx.run_dir)) else ""),
        "",
        table(rows),
        "",
        "Win rates are the judge's mean P(π_{t+1} ≻ opponent) over held-out prompts with a percentile-bootstrap "
        "95% interval. KL(π‖π_1) is the exact per-position KL Σ_h KL(π_{t+1}(·|x, y_<h) ‖ π_1(·|x, y_<h)) over "
        "samples y ~ π_{t+1} (never negative); log-ratio is the single-sample estimate log π_{t+1}(y|x) − "
        "log π_1(y|x) over the same samples, kept for comparison. "
        "Loss before→after: the training loss on the same fixed rows (up to 64 of the iteration's) at π_t, "
        "before training, and at π_{t+1}, after it (a run trained before this figure existed shows its first and "
        "last step's losses, on different rows). Scaled loss is the square loss divided by η² (appendix B units).",
        *(["Best-of-n keeps, per held-out prompt, the sample of n with the largest judged win rate among the n "
           "(eq. 3.5); its win rate is against π_1's plain samples, iteration 0 included."]
          if any("best_of" in row for row in rows) else []),
        "",
        "![win rates](winrate.png)",
        "",
        *(["![response length](length.png)", ""] if have_length else []),
        *alpaca_eval_section(rows),
        *lm_eval_section(rows),
        *outputs_section(ctx, rows),
        *cost_section(ctx),
    ])
    (ctx.run_dir / "report.md").write_text(text)
    plot(ctx, rows)
    plot_length(ctx, rows)
    plot_lm_eval(ctx, rows)
    return table(rows)
