"""A local judge: vLLM's OpenAI-compatible server on a checkpoint, for one evaluate stage.

Started in the interpreter of ``generation.vllm.python`` (the vLLM environment), through a wrapper
that ends it with sppo-run even after kill -9 (``serve.py``), as the leader of a process group of its own, on a free local port, and stopped with its whole group when the stage
ends or fails (process/children.py); it never runs in sppo-run's own process. Log-probabilities are
returned after vLLM's logits processing (``--logprobs-mode processed_logprobs``), so a request that
allows only the two labels' tokens gets exactly P(m) / (P(m) + P(M)) and P(M) / (P(m) + P(M)),
the ratio AlpacaEval reads from the judge's raw log-probabilities.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sppo_nemo.backends.vllm.job import DTYPES, kv_cache_bytes
from sppo_nemo.process.children import package_link, stop_groups
from sppo_nemo.schema.config import VllmConfig
from sppo_nemo.schema.errors import UserError

SERVED_NAME = "judge"
START_TIMEOUT_S = 600.0


class LocalJudgeFailed(UserError):
    pass


class LocalJudge:
    def __init__(self, model: str, max_model_len: int, vllm: VllmConfig, log: Path):
        """``vllm``: generation.vllm's interpreter, dtype, eager mode, tensor parallel and memory keys."""
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        cmd = [vllm.python or sys.executable, "-m", "sppo_nemo.backends.alpaca_eval.serve", str(os.getpid()), "--model", model,
               "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(self.port),
               "--max-model-len", str(max_model_len), "--logprobs-mode", "processed_logprobs",
               "--dtype", DTYPES[vllm.dtype], "--seed", "0", "--tensor-parallel-size", str(vllm.tensor_parallel),
               "--gpu-memory-utilization", str(vllm.gpu_memory_utilization)]
        kv = kv_cache_bytes(vllm.kv_cache_gib, _cuda())
        if kv is not None:
            cmd += ["--kv-cache-memory-bytes", str(kv)]
        if vllm.enforce_eager:
            cmd.append("--enforce-eager")
        self.log = log
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(package_link(log.parent)))
        with open(log, "a") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self._wait_ready(model)

    def _wait_ready(self, model: str) -> None:
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.close()
                raise LocalJudgeFailed(f"evaluation.alpaca_eval.local_model: vLLM's server on {model} exited with "
                                       f"code {self.proc.returncode} before it was ready; its log ({self.log}) ends:\n"
                                       + _tail(self.log))
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1.0)
        self.close()
        raise LocalJudgeFailed(f"evaluation.alpaca_eval.local_model: vLLM's server on {model} was not ready after "
                               f"{START_TIMEOUT_S:.0f} s; its log: {self.log}")

    def label_ids(self, labels: tuple[str, ...]) -> list[int]:
        """The token id of each label under the judge's tokenizer; each must be a single token."""
        ids = []
        for label in labels:
            req = urllib.request.Request(f"http://127.0.0.1:{self.port}/tokenize", method="POST",
                                         headers={"Content-Type": "application/json"},
                                         data=json.dumps({"model": SERVED_NAME, "prompt": label,
                                                          "add_special_tokens": False}).encode())
            with urllib.request.urlopen(req, timeout=30) as r:
                tokens = json.loads(r.read())["tokens"]
            if len(tokens) != 1:
                raise LocalJudgeFailed(f"evaluation.alpaca_eval.local_model: the judge's tokenizer splits the label "
                                       f"{label!r} into {len(tokens)} tokens; AlpacaEval's judge answers with one token, "
                                       f"so choose a judge whose tokenizer has 'm' and 'M' as tokens")
            ids.append(tokens[0])
        return ids

    def close(self) -> None:
        stop_groups([self.proc])


def _cuda() -> bool:
    """Whether GPUs are visible (torch's device count, asked as the vLLM generator asks)."""
    import torch

    return torch.cuda.device_count() > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 15) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:] if path.exists() else []
    return "\n".join(f"    {line}" for line in lines)
