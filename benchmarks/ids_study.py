"""What training on the sampled ids changes, read from finished runs: per iteration, the share of
responses whose ids differ from their text's re-tokenisation, the held-out win rates against π_1
and π_t, both KL estimates, and the loss on the fixed probe rows before and after training.

Give one or more run directories (``<output_dir>/<name>``) and, for the re-tokenisation share,
the policy whose tokenizer the run used (``smollm2`` for the default recipe, or a checkpoint path):

    .venv/bin/python benchmarks/ids_study.py --policy smollm2 runs/smollm2_sppo_3iter [more runs ...]

A run made before responses kept their ids prints "-" for the share (nothing to compare).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def drift(responses: Path, fmt) -> tuple[float, float, int] | None:
    """(share whose ids differ from encode(text), share of those where .strip() changed the text, n)."""
    samples = [s for row in read_jsonl(responses) for s in row["samples"]]
    if not samples or samples[0].get("ids") is None:
        return None
    differ = stripped = 0
    for s in samples:
        ids = s["ids"]
        body = ids[:-1] if s["finished"] else ids
        again = fmt.encode("", s["text"], s["finished"]).response_ids
        if again != ids:
            differ += 1
            stripped += fmt.tok.decode(body, skip_special_tokens=True) != s["text"]
    return differ / len(samples), stripped / max(1, differ), len(samples)


def fmt_ci(m: dict, key: str) -> str:
    if key not in m:
        return "-"
    lo, hi = m.get(f"{key}_ci", [float("nan")] * 2)
    return f"{m[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def study(run: Path, fmt) -> None:
    print(f"\n## {run}\n")
    print("| iter | training samples: ids ≠ re-tokenised (of which strip) | held-out samples: the same | win vs π_1 "
          "| win vs π_t | KL exact | KL log-ratio | probe loss before → after | rows from text |")
    print("|---|---|---|---|---|---|---|---|---|")
    for it in sorted(run.glob("iter_*")):
        m = json.loads((it / "evaluate" / "metrics.json").read_text()) if (it / "evaluate" / "metrics.json").exists() else {}
        gen = it / "generate" / "responses.jsonl"
        d = drift(gen, fmt) if gen.exists() and fmt is not None else None
        share = "-" if d is None else f"{d[0]:.1%} ({d[1]:.0%}) of {d[2]}"
        held = it / "evaluate" / "responses.jsonl"
        e = drift(held, fmt) if held.exists() and fmt is not None else None
        held_share = "-" if e is None else f"{e[0]:.1%} ({e[1]:.0%}) of {e[2]}"
        s = json.loads((it / "train" / "summary.json").read_text()) if (it / "train" / "summary.json").exists() else {}
        probe = (f"{s['probe_loss_before']:.4g} → {s['probe_loss_after']:.4g}" if "probe_loss_before" in s else "-")
        print(f"| {it.name} | {share} | {held_share} | {fmt_ci(m, 'win_rate_vs_base')} | {fmt_ci(m, 'win_rate_vs_previous')} | "
              f"{fmt_ci(m, 'kl_to_base') if 'kl_to_base_log_ratio' in m else '-'} | "
              f"{fmt_ci(m, 'kl_to_base_log_ratio') if 'kl_to_base_log_ratio' in m else fmt_ci(m, 'kl_to_base')} | "
              f"{probe} | {s.get('rows_from_text', '-')} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--policy", default=None, help="the run's base policy, for its tokenizer (smollm2 or a path)")
    ap.add_argument("--system-prompt", default=None)
    args = ap.parse_args()
    fmt = None
    if args.policy:
        from sppo_nemo.backends import policy_location
        from sppo_nemo.backends.chat_format import ChatFormat
        from sppo_nemo.backends.hf import load_tokenizer

        fmt = ChatFormat(load_tokenizer(policy_location(args.policy)), args.system_prompt)
    for run in args.runs:
        study(run, fmt)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
