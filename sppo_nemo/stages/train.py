"""Stage 4 (Algorithm 1, line 6): fit π_{t+1} from π_t on the rows, π_t as the reference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sppo_nemo.formats.artifacts import TIMINGS, write_json, write_jsonl
from sppo_nemo.backends import TrainerSpec, make_trainer, policy_location, trainer_spec
from sppo_nemo.backends.chat_format import rows_from_text
from sppo_nemo.stages.context import Context, PolicyRef, Upstream
from sppo_nemo.formats.rows import read_rows
from sppo_nemo.formats.step_checkpoints import clear_checkpoints

NAME = "train"
# Wall-clock figures go to timings.jsonl, outside the stage digest, so that a resumed run's
# artifacts are byte-identical to an uninterrupted one's.
# So do the step checkpoints' figures: where a killed stage resumed depends on when it was killed.
TIMING_KEYS = {"seconds", "reference_logps_seconds", "mean_step_seconds", "checkpoints_written",
               "checkpoint_seconds", "resumed_at_step"}


@dataclass(frozen=True)
class Inputs:
    policy: PolicyRef
    rows: Upstream  # iter_t/build
    trainer: TrainerSpec
    iteration: int


def inputs(ctx: Context, t: int) -> Inputs:
    return Inputs(ctx.policy(t), ctx.upstream(t, "build"), trainer_spec(ctx.recipe, t), t)


def run(inp: Inputs, workdir: Path, bar) -> dict:
    rows_file = inp.rows.path / "rows.jsonl"
    rows = read_rows(rows_file)  # the trainer reads them itself; here they are counted
    n_rows, from_text = len(rows), rows_from_text(rows)
    del rows
    trainer = make_trainer(inp.trainer)
    t, epochs = inp.iteration, inp.trainer.trainer.epochs
    with bar(n_rows, f"iter {t} reference log-probs") as ref_bar, bar(n_rows * epochs, f"iter {t} train") as b:
        result = trainer.train(Path(policy_location(inp.policy.location)), rows_file, workdir / "policy",
                               progress=b.update, ref_progress=ref_bar.update, state_dir=workdir)
    clear_checkpoints(workdir)  # the committed stage holds the policy and metrics only
    # rows whose responses had no sampled ids (an older run's responses) were tokenised from their text
    result.summary["rows_from_text"] = from_text
    write_jsonl(workdir / "metrics.jsonl", [{k: v for k, v in m.items() if k not in TIMING_KEYS}
                                            for m in result.metrics])
    write_json(workdir / "summary.json", {k: v for k, v in result.summary.items() if k not in TIMING_KEYS})
    write_jsonl(workdir / TIMINGS, [{"step": m["step"], "seconds": m["seconds"]} for m in result.metrics]
                + [{k: v for k, v in result.summary.items() if k in TIMING_KEYS}])
    return result.summary
