"""Judge a policy's outputs against a reference's with AlpacaEval 2.0's judge, resumably, and fit the
length-controlled win rate on the preferences.

Instructions are judged in chunks of :data:`CHUNK`, each chunk one fsync'd line of
``<stage>/alpaca_eval/judgements.jsonl`` (formats/chunklog.py): a stopped stage, kill -9 included,
asks the judge again only for the chunks it has no line for. ``annotations.json`` is written at the
end in AlpacaEval's own format (``output_1`` the reference, ``output_2`` the policy, ``preference``
in [1, 2]), which ``alpaca_eval`` itself reads.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from sppo_nemo.backends.alpaca_eval.client import ChatEndpoint
from sppo_nemo.backends.alpaca_eval.prompt import LABELS, messages, preference, swapped
from sppo_nemo.backends.alpaca_eval.spec import AlpacaEvalSpec, api_key
from sppo_nemo.formats.artifacts import write_json
from sppo_nemo.formats.chunklog import ChunkLog, run_chunks
from sppo_nemo.maths.length_control import length_controlled_win_rate
from sppo_nemo.schema.errors import UserError

CHUNK = 16


class TooFewJudged(UserError):
    pass


def judge(spec: AlpacaEvalSpec, instructions: Sequence[str], outputs: Sequence[str], references: Sequence[str],
          generators: tuple[str, str], job_dir: Path, progress=None) -> dict:
    """The AlpacaEval metrics of ``outputs`` against ``references`` (same instructions, same order);
    ``generators``: the names of the reference and of the policy, for annotations.json."""
    job_dir.mkdir(parents=True, exist_ok=True)
    n_chunks = math.ceil(len(instructions) / CHUNK)
    log = ChunkLog(job_dir / "judgements.jsonl")
    server = None
    if len(log.completed()) < n_chunks:
        endpoint, server = _endpoint(spec, job_dir)
    try:
        def work(c: int, progress) -> list[dict]:
            idx = range(c * CHUNK, min(len(instructions), (c + 1) * CHUNK))

            def one(i: int) -> dict:
                lp = endpoint.first_token_logprobs(messages(instructions[i], outputs[i], references[i]))
                was = swapped(instructions[i])
                return {"i": i, "swapped": was, "logprobs": {t: lp[t] for t in LABELS if t in lp},
                        "preference": preference(lp, was)}

            with ThreadPoolExecutor(spec.concurrency) as pool:
                rows = list(pool.map(one, idx))
            if progress:
                progress(len(rows))
            return rows

        rows = [row for chunk in run_chunks(log, n_chunks, work, progress) for row in chunk]
    finally:
        if server is not None:
            server.close()
    return _results(spec, instructions, outputs, references, generators, rows, job_dir)


def _endpoint(spec: AlpacaEvalSpec, job_dir: Path):
    if spec.local_model:
        from sppo_nemo.backends.alpaca_eval.server import SERVED_NAME, LocalJudge

        server = LocalJudge(spec.local_model, spec.local_max_model_len, spec.vllm, job_dir / "judge_server.log")
        try:
            allowed = server.label_ids(LABELS)
        except BaseException:
            server.close()
            raise
        return ChatEndpoint(server.base_url, SERVED_NAME, None, {"allowed_token_ids": allowed}), server
    key = api_key(spec)
    if not key:
        raise UserError(f"evaluation.alpaca_eval: the environment variable {spec.api_key_env} holds no API key for "
                        f"{spec.endpoint}; export it (the recipe never holds a key) or name another variable in "
                        f"evaluation.alpaca_eval.api_key_env")
    return ChatEndpoint(spec.endpoint, spec.model, key), None


def _results(spec, instructions, outputs, references, generators, rows, job_dir: Path) -> dict:
    prefs = np.array([r["preference"] for r in rows], dtype=np.float64)
    ok = ~np.isnan(prefs)
    write_json(job_dir.parent / "alpaca_eval_annotations.json", [
        {"instruction": instructions[r["i"]], "output_1": references[r["i"]], "output_2": outputs[r["i"]],
         "generator_1": generators[0], "generator_2": generators[1], "annotator": spec.judge_name,
         "preference": None if math.isnan(r["preference"]) else r["preference"]} for r in rows])
    if ok.sum() < 5:
        raise TooFewJudged(f"evaluation.alpaca_eval: the judge named neither label 'm' nor 'M' among its top answer "
                           f"tokens for {int((~ok).sum())} of {len(rows)} instructions, which leaves fewer than the 5 "
                           f"the length-controlled fit needs; the judge ({spec.judge_name}) does not follow "
                           f"AlpacaEval's prompt: choose a stronger judge")
    model_len = np.array([len(o) for o in outputs], dtype=np.float64)[ok]
    ref_len = np.array([len(o) for o in references], dtype=np.float64)[ok]
    lc = length_controlled_win_rate(model_len, ref_len, prefs[ok])
    return {"alpaca_eval_lc_win_rate": lc.lc_win_rate, "alpaca_eval_win_rate": lc.win_rate,
            "alpaca_eval_standard_error": lc.standard_error, "alpaca_eval_length_coef": lc.length_coef,
            "alpaca_eval_judged": int(ok.sum()), "alpaca_eval_unparsed": int((~ok).sum()),
            "alpaca_eval_judge": spec.judge_name, "alpaca_eval_reference": generators[0]}
