"""What evaluation.lm_eval costs the default recipe per evaluated policy, on this CPU.

The documented offline command (docs/evaluation.md) adds ARC-Easy (0-shot, 4 options) and
WinoGrande (5-shot, 2 options) with ``limit: 200`` to the default recipe. Their datasets need the
hub, so this benchmark times lm-eval (our worker, the ``hf`` backend, as the evaluate stage runs it)
on the default policy, SmolLM2-135M-Instruct, over two local tasks of the same shape: multiple
choice with the same options per document and about the same tokens per request (a question of
``--arc-words`` words; a WinoGrande-like 5-shot context of ``--wino-words`` words), their text
taken from the builtin prompts. Accuracy is meaningless here; the time is lm-eval's forward passes,
which depend on the tokens only. Both tasks run in one worker, as in the evaluate stage, at
``--docs`` documents each and at 2 (the worker's start and model load, mostly); printed: the
matmul rates, the precision, the tokens per request, both times, and the projection to 200
documents each (the fixed part plus the per-document part × 198).

    .venv/bin/python benchmarks/bench_lm_eval.py [--docs 50] [--precision fp32|bf16|auto] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {name}.jsonl
test_split: test
fewshot_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def matmul_rates() -> str:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "matmul_peak.py"), "--cpu"], capture_output=True,
                         text=True, check=True).stdout.split()
    return f"torch.mm {out[0]} GFLOP/s fp32, {out[1]} GFLOP/s bf16"


def write_task(folder: Path, name: str, texts: list[str], docs: int, words: int, options: int) -> None:
    """``docs`` documents: a question of ``words`` words and ``options`` choices of a few words each."""
    rows = []
    for i in range(docs):
        words_of = " ".join(texts[(i + j) % len(texts)] for j in range(8)).split()
        question = " ".join(words_of[:words])
        choices = [" ".join(texts[(i + 7 * c + 3) % len(texts)].split()[:6]) for c in range(options)]
        rows.append({"question": question, "choices": choices, "answer": i % options})
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{name}.yaml").write_text(TASK.format(name=name))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=50, help="documents per task (the projection scales to 200)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--arc-words", type=int, default=25, help="ARC-Easy's questions: about 25 words")
    ap.add_argument("--wino-words", type=int, default=25, help="a WinoGrande sentence: about 25 words")
    args = ap.parse_args()
    if args.docs < 3:
        ap.error("--docs must be at least 3: the per-document time is (T(docs) − T(2)) / (docs − 2)")

    from sppo_nemo.backends.hf import load_tokenizer, smollm2_checkpoint
    from sppo_nemo.backends.lm_eval import controller
    from sppo_nemo.backends.lm_eval.spec import LmEvalSpec
    from sppo_nemo.backends.machine import cpu_bf16
    from sppo_nemo.formats.data import builtin_prompts_path

    precision = args.precision
    if precision == "auto":
        precision = "bf16" if cpu_bf16()[0] else "fp32"
    texts = [json.loads(line)["prompt"] for line in builtin_prompts_path().read_text().splitlines() if line.strip()]
    policy = str(smollm2_checkpoint())
    tok = load_tokenizer(policy)
    print(f"machine: {matmul_rates()}; lm-eval hf backend, SmolLM2-135M-Instruct in {precision}, "
          f"batch size {args.batch_size}")
    # ARC-Easy: 0-shot, 4 options; WinoGrande: 5-shot (the leaderboard's count), 2 options.
    shapes = [("arc_like", 0, 4, args.arc_words), ("wino_like", 5, 2, args.wino_words)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tasks"
        folder.mkdir()
        tokens = 0.0
        for name, shots, options, words in shapes:
            write_task(folder, name, texts, max(args.docs, 8), words, options)
            rows = [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]
            q = sum(len(tok(r["question"] + "\nAnswer:")["input_ids"]) for r in rows) / len(rows)
            c = sum(len(tok(" " + x)["input_ids"]) for r in rows for x in r["choices"]) / (len(rows) * options)
            per_request = (shots + 1) * q + c + shots * c  # the shots carry their answers
            tokens += args.docs * options * per_request
            print(f"{name}: {shots}-shot, {options} options, requests of about {per_request:.0f} tokens")
        tasks = tuple((name, shots) for name, shots, _, _ in shapes)

        def timed(docs: int) -> float:
            """One worker, both tasks, ``docs`` documents each, as the evaluate stage runs them."""
            spec = LmEvalSpec(tasks, float(docs), args.batch_size, str(folder), False, precision, None)
            start = time.perf_counter()
            controller.run(spec, policy, Path(tmp) / f"job_{docs}")
            return time.perf_counter() - start

        fixed, full = timed(2), timed(args.docs)
    per_doc = (full - fixed) / (args.docs - 2)
    at_200 = fixed + 198 * per_doc
    print(f"both tasks, {args.docs} documents each: {full:.1f} s ({tokens / full:,.0f} tokens/s, worker start and model "
          f"load included); 2 documents each: {fixed:.1f} s (mostly the start and the load)")
    print(f"the documented task set at limit 200: ≈ {at_200:.0f} s per evaluated policy "
          f"({fixed:.0f} s + 198 × {per_doc:.2f} s); the default recipe evaluates 4 policies (π_1 once, then "
          f"π_2..π_4): ≈ {4 * at_200 / 60:.1f} min per run")
    print(f"machine after: {matmul_rates()}")


if __name__ == "__main__":
    main()
