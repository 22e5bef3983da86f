"""logging.tensorboard and logging.wandb on the real CLI: a T=1 tiny run logs every optimizer step of
metrics.jsonl and the evaluation's metrics.json; a rerun logs nothing again; extending the run to
T=2 logs only iteration 2, at global steps that continue after iteration 1's; a stage committed but
not logged (a crash between the two) is logged on the next run. Read back with TensorBoard's own
EventAccumulator and, for W&B, from the offline run's transaction log (wandb's Record protobuf)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TINY_RECIPE, cli_env, read_json, read_jsonl, sppo_cmd

pytestmark = [pytest.mark.integration, pytest.mark.slow]

try:
    import wandb  # noqa: F401

    WANDB = None
except ImportError as exc:
    WANDB = f"needs wandb (pip install wandb): {exc}"


def _run(tiny_model: Path, out: Path, *overrides: str) -> str:
    import subprocess

    env = cli_env(tiny_model)
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):  # keep wandb's own files out of $HOME
        env[var] = str(out / "wandb-home")
    env.pop("WANDB_MODE", None)
    env.pop("WANDB_API_KEY", None)
    cmd = sppo_cmd(TINY_RECIPE, f"output_dir={out}", "logging.tensorboard=true",
                   f"logging.wandb={'false' if WANDB else 'true'}", *overrides)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of an event file or folder of them, duplicates kept: {tag: [(step, value)]}."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={SCALARS: 0}, purge_orphaned_data=False)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def f32(v: float) -> float:
    return float(np.float32(v))


def events(run: Path) -> list[Path]:
    return sorted((run / "tensorboard").glob("events.out.tfevents.*"))


def expected_train(run: Path, t: int, offset: int) -> dict[str, list[tuple[int, float]]]:
    rows = read_jsonl(run / f"iter_{t:02d}/train/metrics.jsonl")
    return {f"train/{k}": [(offset + r["step"], f32(r[k])) for r in rows]
            for k in ("loss", "lr", "grad_norm", "log_ratio_mean", "loss_scaled")}


def wandb_history(run: Path) -> list[dict]:
    """The history rows of every offline W&B run under <run>/wandb, read from its .wandb file: a
    ':W&B' header, then LevelDB-log records (32 KiB blocks, 7-byte headers) of wandb Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for path in sorted((run / "wandb").glob("offline-run-*/run-*.wandb")):
        data, block, pos, part, payloads = path.read_bytes(), 32768, 7, b"", []
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if block - pos % block < 7:
                pos += block - pos % block
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if length == 0 and kind == 0:  # zero padding to the end of a block
                pos += block - pos % block
                continue
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            if kind == 1:
                payloads.append(chunk)
            elif kind in (2, 3):
                part = (b"" if kind == 2 else part) + chunk
            elif kind == 4:
                payloads.append(part + chunk)
        for payload in payloads:
            record = pb.Record()
            record.ParseFromString(payload)
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


@pytest.fixture(scope="module")
def tracked(tiny_model, tmp_path_factory):
    """One T=1 run with the trackers on, then the same command again; files seen after each."""
    out = tmp_path_factory.mktemp("tracked")
    run = out / "tiny_sppo"
    first = _run(tiny_model, out, "T=1")
    after_first = {"events": events(run), "ledger": read_json(run / "tracking.json"),
                   "wandb": sorted((run / "wandb").glob("offline-run-*")) if not WANDB else []}
    again = _run(tiny_model, out, "T=1")
    return {"out": out, "run": run, "first": first, "again": again, **after_first}


def test_every_optimizer_step_and_the_evaluation_are_in_tensorboard(tracked):
    run = tracked["run"]
    got = scalars(run / "tensorboard")
    for tag, want in expected_train(run, 1, 0).items():
        assert got[tag] == want, tag  # float32 in the event file: exact at that precision
    assert len(got["train/loss"]) == len(read_jsonl(run / "iter_01/train/metrics.jsonl")) > 1
    m, base = read_json(run / "iter_01/evaluate/metrics.json"), read_json(run / "iter_00/evaluate/metrics.json")
    for key in ("win_rate_vs_base", "win_rate_vs_previous", "kl_to_base"):
        assert got[f"eval/{key}"] == [(1, f32(m[key]))], key
    for key in ("mean_tokens", "finished_fraction"):  # iteration 0 (π_1) has them too
        assert got[f"eval/{key}"] == [(0, f32(base[key])), (1, f32(m[key]))], key
    assert got["eval/win_rate_vs_base_ci_lo"] == [(1, f32(m["win_rate_vs_base_ci"][0]))]
    assert got["eval/win_rate_vs_base_ci_hi"] == [(1, f32(m["win_rate_vs_base_ci"][1]))]
    assert "iter_01/train: " in tracked["first"] and "figures logged to tensorboard" in tracked["first"]


def test_a_rerun_logs_nothing_again(tracked):
    run = tracked["run"]
    assert "logged to" not in tracked["again"]
    assert events(run) == tracked["events"] and len(events(run)) == 1  # not even an empty event file
    assert read_json(run / "tracking.json") == tracked["ledger"]
    assert sorted(tracked["ledger"]["logged"]["tensorboard"]) == ["iter_00/evaluate", "iter_01/evaluate",
                                                                  "iter_01/train"]
    if not WANDB:
        assert sorted((run / "wandb").glob("offline-run-*")) == tracked["wandb"]


@pytest.mark.skipif(WANDB is not None, reason=WANDB or "")
def test_wandb_offline_run_holds_the_same_history(tracked):
    run = tracked["run"]
    ledger = tracked["ledger"]
    dirs = tracked["wandb"]
    assert len(dirs) == 1 and dirs[0].name.endswith(ledger["wandb_id"])  # offline, under <run dir>/wandb
    rows = wandb_history(run)
    metrics = read_jsonl(run / "iter_01/train/metrics.jsonl")
    train = [r for r in rows if "train/step" in r]
    assert [(r["train/step"], r["train/loss"], r["train/lr"]) for r in train] == \
        [(m["step"], m["loss"], m["lr"]) for m in metrics]  # float64 in W&B: exact
    ev = {r["eval/iteration"]: r for r in rows if "eval/iteration" in r}
    m = read_json(run / "iter_01/evaluate/metrics.json")
    assert sorted(ev) == [0, 1] and ev[1]["eval/win_rate_vs_base"] == m["win_rate_vs_base"]
    assert ev[1]["eval/kl_to_base"] == m["kl_to_base"] and ev[1]["eval/mean_tokens"] == m["mean_tokens"]


def test_more_iterations_continue_the_global_step_and_a_missed_stage_is_caught_up(tracked, tiny_model):
    out, run = tracked["out"], tracked["run"]
    steps_1 = len(read_jsonl(run / "iter_01/train/metrics.jsonl"))
    second = _run(tiny_model, out, "T=2")
    logged = [line.partition(":")[0] for line in second.splitlines() if "figures logged to" in line]
    assert logged == ["iter_02/train", "iter_02/evaluate"]  # iterations 0 and 1 are not logged again
    new = [p for p in events(run) if p not in tracked["events"]]
    assert len(new) == 1
    got = scalars(new[0])  # the new file holds iteration 2 only, after iteration 1's steps
    assert {tag: got[tag] for tag in expected_train(run, 2, steps_1)} == expected_train(run, 2, steps_1)
    assert {step for tag, pts in got.items() for step, _ in pts if tag.startswith("eval/")} == {2}
    everything = scalars(run / "tensorboard")
    for tag, pts in everything.items():
        assert len({s for s, _ in pts}) == len(pts), f"{tag} logged twice at a step"

    # a crash after committing iter_02/evaluate and before the ledger recorded it for tensorboard
    ledger = read_json(run / "tracking.json")
    del ledger["logged"]["tensorboard"]["iter_02/evaluate"]
    (run / "tracking.json").write_text(json.dumps(ledger))
    third = _run(tiny_model, out, "T=2")
    logged = [line for line in third.splitlines() if "figures logged to" in line]
    assert len(logged) == 1 and re.fullmatch(r"iter_02/evaluate: \d+ figures logged to tensorboard", logged[0])
    caught = [p for p in events(run) if p not in tracked["events"] and p != new[0]]
    assert len(caught) == 1
    m = read_json(run / "iter_02/evaluate/metrics.json")
    assert scalars(caught[0])["eval/win_rate_vs_base"] == [(2, f32(m["win_rate_vs_base"]))]
    assert {tag for tag in scalars(caught[0])} == {t for t in everything if t.startswith("eval/")}
    if not WANDB:  # W&B got iteration 2 once, in a second offline session of the same run id
        train = [r["train/step"] for r in wandb_history(run) if "train/step" in r]
        steps_2 = len(read_jsonl(run / "iter_02/train/metrics.jsonl"))
        assert train == list(range(steps_1 + steps_2))
        assert [r["eval/iteration"] for r in wandb_history(run) if "eval/iteration" in r] == [0, 1, 2]
        assert len(list((run / "wandb").glob("offline-run-*"))) == 2
