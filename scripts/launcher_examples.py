"""Write (or, with --check, compare) launchers/nemo_run/: the scripts NeMo-Run generates for each
job kind of a chained submission, from `sppo-run --submit --dry-run` of the default recipe set up
as a GPU cluster would have it (pyxis image, 8 GPUs per job, the train stage on two nodes).

Run-specific paths become /shared/runs (the run directory's parent) and /shared/work (where
--submit ran), and NeMo-Run's experiment id becomes <experiment-id>, so the files are stable.
Usage: .venv/bin/python scripts/launcher_examples.py [--check]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "launchers" / "nemo_run"
KINDS = {"iter01-generate": "generate", "iter01-annotate": "annotate", "iter01-build": "build",
         "iter01-train": "train", "iter01-evaluate": "evaluate"}
OVERRIDES = [
    "launch.executor=slurm", "launch.partition=batch", "launch.account=my_project",
    "launch.container_image=/shared/images/sppo-nemo.sqsh", "launch.container_mounts=[/shared:/shared]",
    "generation.backend=vllm", "generation.vllm.python=python", "judge.backend=pairrm",
    "launch.generate.gpus_per_node=8", "launch.annotate.gpus_per_node=8", "launch.evaluate.gpus_per_node=8",
    "launch.train.gpus_per_node=8", "launch.train.nodes=2", "launch.build.time=00:30:00",
    "trainer.backend=megatron", "trainer.megatron.launcher=srun", "trainer.megatron.nnodes=2",
    "trainer.megatron.nproc_per_node=8",
    "trainer.megatron.srun_args=[--container-image=/shared/images/sppo-nemo.sqsh,--container-mounts=/shared:/shared]",
]


def generate() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        runs, work = Path(tmp) / "runs", Path(tmp) / "work"
        work.mkdir()
        proc = subprocess.run([sys.executable, "-m", "sppo_nemo", str(ROOT / "recipes" / "smollm2_sppo_3iter.yaml"),
                               f"output_dir={runs}", *OVERRIDES, "--submit", "--dry-run"],
                              capture_output=True, text=True, cwd=work, timeout=300)
        if proc.returncode != 0:
            sys.exit(f"the dry run failed:\n{proc.stderr}")
        text = proc.stdout.replace(str(runs), "/shared/runs").replace(str(work), "/shared/work")
        text = text.replace(str(ROOT / "recipes"), "/shared/work/recipes")
    text = re.sub(r"_\d{10,}", "_<experiment-id>", text)  # NeMo-Run 0.11: ns since the epoch; 0.10: seconds
    files = {}
    for block in re.split(r"^# ---- ", text, flags=re.M)[1:]:
        head, _, body = block.partition("\n")
        name = head.split(":")[0]
        stem, _, ext = name.partition(".")
        if stem in KINDS:
            files[f"{KINDS[stem]}.{ext}"] = body.rstrip("\n") + "\n"
    return files


def main() -> int:
    files = generate()
    if "--check" in sys.argv:
        stale = [n for n, body in files.items() if not (OUT / n).exists() or (OUT / n).read_text() != body]
        stale += [p.name for p in OUT.glob("*.*") if p.name not in files and p.name != "README.md"]
        if stale:
            print("launchers/nemo_run/ is out of date: " + ", ".join(sorted(stale))
                  + "; run .venv/bin/python scripts/launcher_examples.py", file=sys.stderr)
            return 1
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        (OUT / name).write_text(body)
    print(f"wrote {len(files)} files to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
