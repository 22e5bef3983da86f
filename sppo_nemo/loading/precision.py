"""``precision: auto``: bf16 where the machine computes it, fp32 elsewhere; decided once per run.

The three precision keys (``generation.precision``, ``trainer.precision``,
``evaluation.kl_precision``) accept ``auto``. The rule, per key:

- ``generation.precision``: bf16 on CUDA; on a CPU, bf16 only where bf16 matrix products run
  natively (``backends/machine.py``), fp32 elsewhere: emulated bf16 is ~100x slower than fp32.
- ``trainer.precision``: the same for the torch trainer. The megatron trainer runs on GPUs (its
  ranks may be on other nodes, ``launcher: srun``), so bf16 unless it is launched on this machine
  and this machine has no CUDA (the CPU test path), where the CPU rule applies. The game trainer
  computes in float64 and ignores the key: fp32.
- ``evaluation.kl_precision``: the resolved ``generation.precision``, i.e. the sampling weights
  themselves, so the KL needs no second copy of the policy.

The first command that runs a stage records the resolved values in ``<run dir>/precision.json``.
Later commands (a resume, a chained job on another node) take the recorded value for every key
still set to ``auto``, saying so when this machine would have chosen otherwise: a run is never
silently mixed, and never stale because it moved machines. Stage fingerprints, the resolved recipe
and the report hold the resolved values; an explicit ``fp32``/``bf16`` is never changed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sppo_nemo.schema.config import AUTO, Recipe

RECORD = "precision.json"
KEYS = ("generation.precision", "trainer.precision", "evaluation.kl_precision")


def wanted(r: Recipe, cuda: bool, cpu_bf16: bool) -> dict[str, str]:
    """What this machine would resolve each key to, were it ``auto``."""
    cpu = "bf16" if cpu_bf16 else "fp32"
    on_device = "bf16" if cuda else cpu
    gen = on_device
    if r.trainer.backend == "game":
        train = "fp32"
    elif r.trainer.backend == "megatron":
        elsewhere = r.trainer.megatron.launcher == "srun" or r.launch.executor not in ("inline",)
        train = "bf16" if cuda or elsewhere else cpu
    else:
        train = on_device
    kl = r.generation.precision if r.generation.precision != AUTO else gen
    return {"generation.precision": gen, "trainer.precision": train, "evaluation.kl_precision": kl}


def _get(r: Recipe, key: str) -> str:
    section, name = key.split(".")
    return getattr(getattr(r, section), name)


def _with(r: Recipe, values: dict[str, str]) -> Recipe:
    sections = {}
    for key, value in values.items():
        section, name = key.split(".")
        sections[section] = dataclasses.replace(sections.get(section, getattr(r, section)), **{name: value})
    return dataclasses.replace(r, **sections)


def auto_keys(r: Recipe) -> list[str]:
    return [k for k in KEYS if _get(r, k) == AUTO]


def resolve(r: Recipe, run_dir: Path, cuda: bool, cpu_bf16: bool, why: str,
            record: bool) -> tuple[Recipe, list[str]]:
    """The recipe with every ``auto`` replaced (recorded values first), and the lines to print.
    ``record``: write what was decided into the run directory when nothing is recorded yet."""
    keys = auto_keys(r)
    if not keys:
        return r, []
    path = run_dir / RECORD
    recorded = _read(path)
    here = wanted(r, cuda, cpu_bf16)
    values = {k: recorded.get(k, here[k]) for k in keys}
    if "evaluation.kl_precision" in values and "evaluation.kl_precision" not in recorded:
        # the KL follows the sampling weights the run actually uses, recorded or just chosen
        values["evaluation.kl_precision"] = values.get("generation.precision", r.generation.precision)
    out = _with(r, values)
    machine = f"CUDA: {'yes' if cuda else 'none'}; CPU: {why}"
    lines = [f"precision: auto -> " + ", ".join(f"{k}={values[k]}" for k in keys) + f"  [{machine}]"]
    kept = [k for k in keys if k in recorded]
    if kept:
        differs = [k for k in kept if recorded[k] != here[k]]
        lines = [f"precision: auto -> " + ", ".join(f"{k}={values[k]}" for k in keys)
                 + f"  [as this run started: {path}]"]
        if differs:
            lines.append("precision: this machine would choose " + ", ".join(f"{k}={here[k]}" for k in differs)
                         + f" ({machine}); the run keeps what it started with. To change it, set the key "
                           f"explicitly (finished stages then become stale) or start a new run.")
    if record and any(k not in recorded for k in keys):
        merged = {**recorded, **{k: values[k] for k in keys}}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**merged, "machine": recorded.get("machine", machine)}, indent=1) + "\n")
        tmp.replace(path)
    return out, lines


def _read(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        from sppo_nemo.schema.errors import UserError

        raise UserError(f"{path} cannot be read ({exc}); it records the precisions this run started with. "
                        f"Delete it to let this machine decide again (finished stages made in another "
                        f"precision then become stale).") from None
    return {k: v for k, v in data.items() if k in KEYS and v in ("fp32", "bf16")}


def recorded_note(run_dir: Path) -> str | None:
    """The report's words on the ``auto`` keys: which they were, and the machine that chose them."""
    path = run_dir / RECORD
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    keys = ", ".join(k for k in KEYS if k in data)
    return f"{keys}: auto, chosen when the run started ({data.get('machine', 'machine not recorded')})"
