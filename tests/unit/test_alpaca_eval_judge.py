"""AlpacaEval 2.0's judge without a model: the prompt and position swap, the preference read from
log-probabilities (hand-worked), the recipe checks, the key's source, and the endpoint client's
retries and refusals against a local HTTP server speaking the chat-completions protocol."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from sppo_nemo.backends.alpaca_eval import client as client_mod
from sppo_nemo.backends.alpaca_eval.annotate import TooFewJudged, _results
from sppo_nemo.backends.alpaca_eval.client import ChatEndpoint, EndpointError
from sppo_nemo.backends.alpaca_eval.prompt import messages, preference, swapped
from sppo_nemo.backends.alpaca_eval.spec import alpaca_eval_spec, api_key, check
from sppo_nemo.schema.config import AlpacaEvalConfig, Recipe

pytestmark = pytest.mark.unit


def recipe(**keys) -> Recipe:
    r = Recipe(name="t")
    r.evaluation.alpaca_eval = AlpacaEvalConfig(enabled=True, **keys)
    return r


def test_the_preference_is_two_minus_p_first_and_flips_when_swapped():
    # P(m) = 0.2, P(M) = 0.8 over the two labels: output 1 (the reference) better with 0.2 → 1.8
    lp = {"m": math.log(0.2), "M": math.log(0.8), "The": -9.0}
    assert preference(lp, False) == pytest.approx(1.8)
    assert preference(lp, True) == pytest.approx(1.2)  # the model was output 1 (m): it wins with 0.2
    # only the ratio counts: the same 1:4 at other absolute log-probabilities
    assert preference({"m": -10.0, "M": -10.0 + math.log(4)}, False) == pytest.approx(1.8)
    assert preference({"M": -3.0}, False) == 2.0 and preference({"m": -3.0}, False) == 1.0
    assert math.isnan(preference({"Both": -0.1}, False))


def test_the_reference_is_output_one_unless_the_instruction_swaps_them():
    instructions = [f"instruction {i}" for i in range(400)]
    share = sum(map(swapped, instructions)) / len(instructions)
    assert 0.4 < share < 0.6  # about half, fixed by the text
    plain = next(i for i in instructions if not swapped(i))
    system, user = messages(plain, "MODEL", "REFERENCE")
    assert system["role"] == "system" and user["role"] == "user"
    assert user["content"].index("REFERENCE") < user["content"].index("MODEL")
    assert f'"instruction": """{plain}"""' in user["content"]
    flipped = next(i for i in instructions if swapped(i))
    assert messages(flipped, "MODEL", "REFERENCE")[1]["content"].index("MODEL") < \
        messages(flipped, "MODEL", "REFERENCE")[1]["content"].index("REFERENCE")


def test_every_problem_at_once(tmp_path):
    r = recipe(endpoint="api.openai.com", local_model=str(tmp_path / "none"), reference=str(tmp_path / "none.json"),
               concurrency=0, local_max_model_len=100)
    r.evaluation.enabled = False
    problems = "\n".join(check(r, tmp_path))
    for words in ("evaluation.enabled is false", "not both", "give the API's base URL", "is not a folder",
                  "is not a file", "concurrency: 0", "local_max_model_len: 100"):
        assert words in problems, words
    assert "not neither" in "\n".join(check(recipe(), tmp_path))
    assert check(recipe(endpoint="https://api.openai.com/v1"), tmp_path) == []


def test_the_key_comes_from_the_environment_and_the_fingerprint_holds_no_key(monkeypatch, tmp_path):
    spec = alpaca_eval_spec(recipe(endpoint="https://api.example.com/v1", api_key_env="MY_JUDGE_KEY"))
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-secret")
    assert api_key(spec) == "sk-secret"
    assert "sk-secret" not in json.dumps(spec.fingerprint())
    ref = tmp_path / "ref.json"
    ref.write_text("[]")
    one = alpaca_eval_spec(recipe(endpoint="https://x/v1", reference=str(ref))).fingerprint()
    ref.write_text("[ ]")
    assert alpaca_eval_spec(recipe(endpoint="https://x/v1", reference=str(ref))).fingerprint() != one


class Endpoint(BaseHTTPRequestHandler):
    """Answers with the statuses queued in ``script`` (then 200 with m/M log-probabilities)."""
    script: list[int] = []
    seen: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Endpoint.seen.append({"auth": self.headers.get("Authorization"), **body})
        status = Endpoint.script.pop(0) if Endpoint.script else 200
        reply = {"error": {"message": "no"}} if status != 200 else {"choices": [{"logprobs": {"content": [
            {"token": "M", "logprob": -0.1, "top_logprobs": [{"token": "M", "logprob": -0.1},
                                                            {"token": "m", "logprob": -2.4}]}]}}]}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint(monkeypatch):
    monkeypatch.setattr(client_mod.time, "sleep", lambda s: None)
    Endpoint.script, Endpoint.seen = [], []
    server = HTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_the_client_retries_rate_limits_and_sends_alpaca_evals_request(endpoint):
    Endpoint.script = [429, 503]
    lp = ChatEndpoint(endpoint, "gpt-4-turbo", "sk-1").first_token_logprobs([{"role": "user", "content": "x"}])
    assert lp == {"M": -0.1, "m": -2.4}
    assert len(Endpoint.seen) == 3
    last = Endpoint.seen[-1]
    assert last["auth"] == "Bearer sk-1" and last["model"] == "gpt-4-turbo"
    assert (last["max_tokens"], last["logprobs"], last["top_logprobs"], last["temperature"]) == (1, True, 5, 1.0)


def test_the_client_stops_at_a_refusal_quoting_it(endpoint):
    Endpoint.script = [401]
    with pytest.raises(EndpointError, match="HTTP 401"):
        ChatEndpoint(endpoint, "m", "bad").first_token_logprobs([])
    assert len(Endpoint.seen) == 1
    Endpoint.script = [500] * client_mod.ATTEMPTS
    with pytest.raises(EndpointError, match="no answer after 6 attempts"):
        ChatEndpoint(endpoint, "m", None).first_token_logprobs([])


def test_fewer_than_five_readable_judgements_is_a_message(tmp_path):
    spec = alpaca_eval_spec(recipe(endpoint="https://x/v1"))
    rows = [{"i": i, "preference": 1.5 if i < 4 else math.nan} for i in range(10)]
    with pytest.raises(TooFewJudged, match="for 6 of 10 instructions"):
        _results(spec, ["q"] * 10, ["a"] * 10, ["b"] * 10, ("ref", "pol"), rows, tmp_path / "job")
