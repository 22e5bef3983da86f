"""``evaluation.alpaca_eval``: the keys read, checked and fingerprinted (no network, no vLLM import).

The fingerprint names the judge (endpoint and model, or the local model's content) and the
reference (``base`` or the reference file's content), never the key: a key is read from the
environment variable ``api_key_env`` at run time.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from sppo_nemo.schema.config import AlpacaEvalConfig, Recipe, VllmConfig, looks_like_path

KEY = "evaluation.alpaca_eval"
BASE = "base"


@dataclass(frozen=True)
class AlpacaEvalSpec:
    endpoint: str | None
    model: str
    api_key_env: str
    local_model: str | None
    local_max_model_len: int
    reference: str  # "base" or an absolute path
    concurrency: int
    vllm: VllmConfig  # generation.vllm: the local judge's interpreter and engine keys

    @property
    def judge_name(self) -> str:
        """Who judged, as the report names it."""
        if self.local_model:
            return f"local model {self.local_model} (served by vLLM; not AlpacaEval 2.0's GPT-4 Turbo judge)"
        return f"{self.model} at {self.endpoint}"

    def fingerprint(self) -> dict:
        """The judge by its location (a local model by its path, as a hub policy is by its id: hashing a
        7B judge at every run start would cost minutes) and the reference file by its content."""
        judge = ({"local_model": self.local_model, "max_model_len": self.local_max_model_len}
                 if self.local_model else {"endpoint": self.endpoint, "model": self.model})
        ref = self.reference
        if ref != BASE and Path(ref).is_file():
            ref = hashlib.sha256(Path(ref).read_bytes()).hexdigest()[:16]
        return {"judge": judge, "reference": ref}


def alpaca_eval_spec(r: Recipe) -> AlpacaEvalSpec | None:
    c = r.evaluation.alpaca_eval
    if not c.enabled:
        return None
    ref = c.reference if c.reference == BASE else str(Path(c.reference).resolve())
    local = str(Path(c.local_model).resolve()) if c.local_model and looks_like_path(c.local_model) else c.local_model
    return AlpacaEvalSpec(c.endpoint, c.model, c.api_key_env, local, c.local_max_model_len, ref, c.concurrency,
                          r.generation.vllm)


def api_key(spec: AlpacaEvalSpec) -> str | None:
    return os.environ.get(spec.api_key_env) if spec.endpoint else None


def check(r: Recipe, base_dir: Path) -> list[str]:
    c: AlpacaEvalConfig = r.evaluation.alpaca_eval
    if not c.enabled:
        return []
    p = []
    if not r.evaluation.enabled:
        p.append(f"{KEY}.enabled: true, but evaluation.enabled is false: no evaluate stage runs it; set "
                 f"evaluation.enabled=true or {KEY}.enabled=false")
    if bool(c.endpoint) == bool(c.local_model):
        p.append(f"{KEY}: name one judge: endpoint (an OpenAI-compatible URL, e.g. https://api.openai.com/v1, its "
                 f"key in the environment variable api_key_env) or local_model (a checkpoint sppo-run serves with "
                 f"vLLM), not {'both' if c.endpoint else 'neither'}")
    if c.endpoint and not c.endpoint.startswith(("http://", "https://")):
        p.append(f"{KEY}.endpoint: {c.endpoint!r}; give the API's base URL, e.g. https://api.openai.com/v1")
    if c.local_model and looks_like_path(c.local_model) and not Path(c.local_model).is_dir():
        p.append(f"{KEY}.local_model: {c.local_model} is not a folder; give a checkpoint folder vLLM can load")
    if c.reference != BASE and not Path(c.reference).is_file():
        p.append(f"{KEY}.reference: {c.reference} is not a file; give an AlpacaEval outputs JSON (a list of "
                 f"{{instruction, output}}) or 'base' for π_1's outputs")
    if c.concurrency < 1:
        p.append(f"{KEY}.concurrency: {c.concurrency}; must be at least 1")
    if c.local_max_model_len < 256:
        p.append(f"{KEY}.local_max_model_len: {c.local_max_model_len}; the judge's prompt alone is ~300 tokens")
    return p
