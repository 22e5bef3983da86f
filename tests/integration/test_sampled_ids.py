"""Training and scoring use the token ids a response was sampled as, never a re-tokenisation of its
text; on the tiny random Llama through its real tokenizer.

The responses here are id sequences that do not survive decode → encode (a word spelt one
character a token, which the tokenizer would merge; a special token, which the decoded text drops):
the test fails if a scorer (``HFGenerator.sequence_logprobs``, ``kl_terms``) or the torch trainer
re-tokenises them. The megatron trainer builds its sequences with the same ``encode_rows`` and is
held to the torch trainer's numbers on rows with such ids by tests/integration/test_fixed_rows.py.

Also: generation never samples past trainer.max_length (``SamplingParams.max_length``); a row
whose ids run longer is cut to the prefix that fits, with no end-of-turn added; ``kl_terms`` equals
a brute-force per-position KL from the two models' full logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sppo_nemo.backends.chat_format import Encoded, encode_rows
from sppo_nemo.backends.hf import HFGenerator, load_causal_lm
from sppo_nemo.backends.seq_logps import sequence_logps
from sppo_nemo.schema.config import TrainerConfig
from sppo_nemo.schema.protocols import PairRow, PointRow, Prompt, Sample, SamplingParams
from sppo_nemo.formats.rows import write_rows

pytestmark = pytest.mark.integration

PROMPT = "How many kilometers are in 13000 meters?"


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    from sppo_nemo.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("other") / "tiny-llama", seed=1)


@pytest.fixture(scope="module")
def gen(tiny_model: Path):
    g = HFGenerator(str(tiny_model), None, max_prompt_length=64, device="cpu")
    yield g
    g.close()


def spelt(tok, word: str) -> list[int]:
    """``word`` one character a token: ids the tokenizer's merges would never produce."""
    return [tok.convert_tokens_to_ids(ch) for ch in word]


def drifting(gen: HFGenerator) -> list[list[int]]:
    """Sampled-looking id rows whose decode → encode is another sequence: spelt words, a special
    token in the middle, finished (the end id last) or not."""
    tok, end = gen.tok, gen.fmt.end_of_turn
    words = tok("thirteen", add_special_tokens=False)["input_ids"]
    rows = [spelt(tok, "kilometers") + [end],
            words + [tok.convert_tokens_to_ids("<|im_start|>")] + words,
            spelt(tok, "meters") + words]
    for r in rows:
        finished = r[-1] in gen.fmt.end_ids
        text = tok.decode(r[:-1] if finished else r, skip_special_tokens=True).strip()
        assert gen.fmt.encode(PROMPT, text, finished).response_ids != r  # the premise: re-encoding drifts
    return rows


def samples(gen, rows) -> list[Sample]:
    from sppo_nemo.backends.chat_format import decode_sample

    return [decode_sample(gen.tok, gen.fmt.end_ids, "p", k, r) for k, r in enumerate(rows)]


def test_samples_keep_their_ids_and_scoring_uses_them(gen: HFGenerator):
    rows = drifting(gen)
    ss = samples(gen, rows)
    assert [s.ids for s in ss] == rows and [s.num_tokens for s in ss] == [len(r) for r in rows]
    prompts = [Prompt("p", PROMPT)] * len(ss)
    got = gen.sequence_logprobs(prompts, ss)
    p = gen.fmt.prompt_ids(PROMPT, 64)
    with torch.no_grad():
        want = sequence_logps(gen.model, [Encoded(p, r) for r in rows], gen.tok.pad_token_id).double().numpy()
        text = sequence_logps(gen.model, [gen.fmt.encode(PROMPT, s.text, s.finished, 64) for s in ss],
                              gen.tok.pad_token_id).double().numpy()
    assert got == pytest.approx(want, abs=1e-4)
    assert abs(got - text).max() > 0.1  # the re-tokenised paths are other events
    # a record of an older run, text alone, is tokenised as before
    old = [Sample(s.prompt_id, s.index, s.text, s.num_tokens, s.finished) for s in ss]
    assert gen.sequence_logprobs(prompts, old) == pytest.approx(text, abs=1e-4)


def brute_force_kl(a, b, p: list[int], r: list[int]) -> float:
    """Σ over response positions of KL(a(·|prefix) ‖ b(·|prefix)), from each model's full logits."""
    ids = torch.tensor([p + r])
    with torch.no_grad():
        la = torch.log_softmax(a(input_ids=ids).logits[0].float(), -1)
        lb = torch.log_softmax(b(input_ids=ids).logits[0].float(), -1)
    pos = range(len(p) - 1, len(p) + len(r) - 1)
    return float(sum((la[h].exp() * (la[h] - lb[h])).sum() for h in pos))


def test_kl_terms_are_the_per_position_kl_of_the_sampled_ids(gen: HFGenerator, tiny_model: Path, other_model: Path):
    rows = drifting(gen)
    ss = samples(gen, rows)
    prompts = [Prompt("p", PROMPT)] * len(ss)
    same = gen.kl_terms(str(tiny_model), prompts, ss)
    assert same[:, 0] == pytest.approx(gen.sequence_logprobs(prompts, ss), abs=1e-4)
    assert same[:, 1] == pytest.approx(same[:, 0], abs=1e-5) and same[:, 2] == pytest.approx(0.0, abs=1e-5)
    other = gen.kl_terms(str(other_model), prompts, ss)
    a, b = load_causal_lm(str(tiny_model)).eval(), load_causal_lm(str(other_model)).eval()
    p = gen.fmt.prompt_ids(PROMPT, 64)
    assert other[:, 2] == pytest.approx([brute_force_kl(a, b, p, r) for r in rows], rel=1e-4)
    assert (other[:, 2] > 0).all()
    with torch.no_grad():
        theirs = sequence_logps(b, [Encoded(p, r) for r in rows], gen.tok.pad_token_id).double().numpy()
    assert other[:, 1] == pytest.approx(theirs, abs=1e-4)


def test_encode_rows_takes_the_ids_and_cuts_one_way(gen: HFGenerator):
    rows = drifting(gen)
    fmt = gen.fmt
    point = PointRow("p", PROMPT, "text", True, 0.5, None, rows[0])
    pair = PairRow("p", PROMPT, "a", "b", True, False, 0.7, rows[0], rows[2])
    p = fmt.prompt_ids(PROMPT, 64)
    (e,), (c, r) = encode_rows(fmt, [point, pair], 64, 256)
    assert (e.response_ids, c.response_ids, r.response_ids) == (rows[0], rows[0], rows[2])
    short = len(p) + 4  # room for 4 response tokens: the prefix, no end-of-turn appended
    (e,), = encode_rows(fmt, [point], 64, short)
    assert e.response_ids == rows[0][:4] and fmt.end_of_turn not in e.response_ids


def test_generation_stops_where_training_would_cut(gen: HFGenerator):
    prompts = [Prompt("a", PROMPT), Prompt("b", "Hi?")]
    lengths = [len(gen.fmt.prompt_ids(x.text, 64)) for x in prompts]
    max_length = lengths[0] + 5  # prompt a leaves room for 5 tokens, prompt b for more than 30
    params = SamplingParams(2.0, 1.0, 30, 0, 8, max_length)  # hot: few rows finish early
    out = gen.generate(prompts, 4, params)
    assert all(s.num_tokens <= 5 for s in out[0]) and any(s.num_tokens == 5 for s in out[0])
    assert max(s.num_tokens for s in out[1]) > 5
    for ss, n in zip(out, lengths):
        for s in ss:
            assert n + len(s.ids) <= max_length or s.prompt_id == "b"
            e = gen.fmt.encode(PROMPT if s.prompt_id == "a" else "Hi?", s.text, s.finished, 64, max_length, s.ids)
            assert e.response_ids == s.ids  # nothing cut again


def test_the_torch_trainer_trains_the_sampled_ids(gen: HFGenerator, tiny_model: Path, tmp_path: Path):
    from sppo_nemo.backends.torch_trainer import TorchTrainer

    rows_ids = drifting(gen)
    ss = samples(gen, rows_ids)
    rows = [PointRow("p", PROMPT, s.text, s.finished, w, None, s.ids) for s, w in zip(ss, (0.9, 0.1, 0.6))]
    write_rows(tmp_path / "rows.jsonl", rows)
    c = TrainerConfig(lr=1e-3, warmup_ratio=0.0, batch_size=3, grad_accum=1, epochs=1, max_prompt_length=64,
                      max_length=256, pack_prompts=False)
    result = TorchTrainer(c, "sppo", 10.0, None, seed=0, device="cpu").train(
        tiny_model, tmp_path / "rows.jsonl", tmp_path / "policy")
    p = len(gen.fmt.prompt_ids(PROMPT, 64))
    assert sum(m["tokens"] for m in result.metrics) == sum(p + len(r) for r in rows_ids)
    texts = [gen.fmt.encode(PROMPT, s.text, s.finished, 64) for s in ss]
    assert sum(p + len(e.response_ids) for e in texts) != sum(p + len(r) for r in rows_ids)
