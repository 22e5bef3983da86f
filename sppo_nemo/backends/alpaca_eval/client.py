"""An OpenAI-compatible chat endpoint, asked for one token with its top log-probabilities.

Standard library only (``urllib``): the official client is not needed for one POST. A request that
the endpoint refuses for its rate or its load (HTTP 429, 5xx) or that the network drops is retried
with exponential backoff, up to :data:`ATTEMPTS` times; any other refusal (a wrong key, an unknown
model) ends the stage at once with the endpoint's own words.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from sppo_nemo.schema.errors import UserError

ATTEMPTS = 6
TIMEOUT_S = 120.0


class EndpointError(UserError):
    pass


class ChatEndpoint:
    def __init__(self, base_url: str, model: str, api_key: str | None, extra: dict | None = None):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.extra = extra or {}  # e.g. vLLM's allowed_token_ids for a local judge

    def first_token_logprobs(self, messages: list[dict], top: int = 5) -> dict[str, float]:
        """The answer's first token's top log-probabilities, by token."""
        body = {"model": self.model, "messages": messages, "max_tokens": 1, "temperature": 1.0,
                "logprobs": True, "top_logprobs": top, **self.extra}
        reply = self._post(body)
        try:
            content = reply["choices"][0]["logprobs"]["content"]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.url}: the reply has no log-probabilities (choices[0].logprobs.content); the "
                                f"judge must support logprobs/top_logprobs, as OpenAI's and vLLM's chat APIs do. "
                                f"Reply: {json.dumps(reply)[:300]}") from None
        if not content:
            return {}
        out: dict[str, float] = {}
        for item in content[0].get("top_logprobs") or []:
            out.setdefault(item["token"], float(item["logprob"]))
        return out

    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode("utf-8")
        for attempt in range(ATTEMPTS):
            req = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                text = e.read().decode("utf-8", errors="replace")[:500]
                if e.code != 429 and e.code < 500:
                    raise EndpointError(f"{self.url} refused the request (HTTP {e.code}): {text}") from None
                problem = f"HTTP {e.code}: {text}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                problem = str(getattr(e, "reason", e))
            if attempt + 1 < ATTEMPTS:
                time.sleep(min(60.0, 2.0 ** attempt))
        raise EndpointError(f"{self.url}: no answer after {ATTEMPTS} attempts ({problem}); the judgements made so "
                            f"far are kept, and a rerun of the same command resumes after them")
