"""Stage 4 (Algorithm 1, line 6): fit π_{t+1} from π_t on the rows, π_t as the reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sppo_nemo.artifacts import TIMINGS, write_json, write_jsonl
from sppo_nemo.context import Context
from sppo_nemo.stages.build import read_rows


def fingerprint(ctx: Context, t: int) -> dict:
    r = ctx.recipe
    return {
        "policy": ctx.policy_key(t),
        "policy.system_prompt": r.policy.system_prompt,
        "rows": ctx.stage(t, "build").digest(),
        "trainer": _trainer_keys(r.trainer),
        "loss.type": r.loss.type,
        "eta": r.eta,
        "seed": r.seed,
    }


def _trainer_keys(trainer) -> dict:
    """The trainer section; the megatron subsection only counts when that backend is chosen, so
    torch-backend runs keep their fingerprints."""
    keys = dataclasses.asdict(trainer)
    if trainer.backend != "megatron":
        keys.pop("megatron")
    return keys


def run(ctx: Context, t: int, workdir: Path) -> dict:
    from sppo_nemo.backends import make_trainer

    rows = read_rows(ctx.stage(t, "build").path / "rows.jsonl")
    trainer = make_trainer(ctx.recipe, t)
    epochs = ctx.recipe.trainer.epochs
    with ctx.bar(len(rows), f"iter {t} reference log-probs") as ref_bar, \
            ctx.bar(len(rows) * epochs, f"iter {t} train") as bar:
        result = trainer.train(Path(ctx.policy(t)), rows, workdir / "policy", progress=bar.update,
                               ref_progress=ref_bar.update)
    # Wall-clock figures go to timings.jsonl, outside the stage digest, so that a resumed run's
    # artifacts are byte-identical to an uninterrupted one's.
    timing_keys = {"seconds", "reference_logps_seconds", "mean_step_seconds"}
    write_jsonl(workdir / "metrics.jsonl", [{k: v for k, v in m.items() if k not in timing_keys}
                                            for m in result.metrics])
    write_json(workdir / "summary.json", {k: v for k, v in result.summary.items() if k not in timing_keys})
    write_jsonl(workdir / TIMINGS, [{"step": m["step"], "seconds": m["seconds"]} for m in result.metrics]
                + [{k: v for k, v in result.summary.items() if k in timing_keys}])
    return result.summary
