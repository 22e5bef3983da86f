"""HFGenerator's sampling (sppo_nemo/backends/hf.py): each prompt prefilled once, its KV cache
repeated for its K samples, then a seeded sampling loop of our own. On the tiny random Llama.

- the same prompts, K, parameters and seed give the same token ids; another seed other ids; the K
  samples of one prompt differ from each other;
- a row ends at its first end id or at max_new_tokens, and Samples are what decode_sample makes
  of the rows (finished, num_tokens with the end token, text without it);
- the prompt the model continues is ChatFormat.prompt_ids(text, max_prompt), cut from the left
  as training cuts it;
- with top_p so small that only the most likely token survives, every sample equals transformers'
  greedy ``generate`` of its prompt alone: the expanded cache continues each prompt correctly,
  whatever the left padding of the batch and whichever rows finished and left it.
"""

from __future__ import annotations

import pytest
import torch

from sppo_nemo.backends.hf import HFGenerator
from sppo_nemo.backends.chat_format import decode_sample
from sppo_nemo.schema.protocols import Prompt, SamplingParams
from sppo_nemo.maths.seeds import derive_seed

TEXTS = ["What is two plus five?", "Name a colour.",
         "Write a long and careful answer about the history of counting, with examples from many places."]


@pytest.fixture(scope="module")
def gen(tmp_path_factory) -> HFGenerator:
    from sppo_nemo.testing import build_tiny_llama

    path = build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")
    g = HFGenerator(str(path), None, max_prompt_length=None, device="cpu")
    yield g
    g.close()


def params(seed=0, top_p=1.0, temperature=1.0, max_new=12, batch=64) -> SamplingParams:
    return SamplingParams(temperature, top_p, max_new, seed, batch)


def prompt_ids(gen, texts=TEXTS, cut=None):
    return [gen.fmt.prompt_ids(t, cut) for t in texts]


def test_same_seed_same_samples_other_seed_other_samples(gen):
    a = gen.sample_ids(prompt_ids(gen), 4, params(), seed=11)
    b = gen.sample_ids(prompt_ids(gen), 4, params(), seed=11)
    c = gen.sample_ids(prompt_ids(gen), 4, params(), seed=12)
    assert a == b
    assert a != c
    assert len(a) == 3 * 4


def test_the_k_samples_of_a_prompt_differ(gen):
    rows = gen.sample_ids(prompt_ids(gen), 4, params(max_new=8), seed=3)
    for i in range(3):
        mine = [tuple(r) for r in rows[4 * i:4 * i + 4]]
        assert len(set(mine)) == 4, mine


def test_rows_end_at_the_first_end_id_or_at_max_new_tokens(gen):
    ends = set(gen.fmt.end_ids)
    rows = gen.sample_ids(prompt_ids(gen), 8, params(max_new=20, temperature=2.0), seed=5)
    for r in rows:
        assert 1 <= len(r) <= 20
        assert not ends & set(r[:-1])  # nothing after an end id
        assert r[-1] in ends or len(r) == 20


def test_samples_are_decode_sample_of_the_rows_with_the_group_seed(gen):
    prompts = [Prompt(f"p{i}", t) for i, t in enumerate(TEXTS)]
    p = params(seed=0, max_new=10, batch=4)  # 4 // K=2: two prompts per group, groups seeded 0, 1 (seed 0: some rows finish)
    samples = gen.generate(prompts, 2, p)
    rows = (gen.sample_ids(prompt_ids(gen, TEXTS[:2]), 2, p, derive_seed(0, 0))
            + gen.sample_ids(prompt_ids(gen, TEXTS[2:]), 2, p, derive_seed(0, 1)))
    flat = [s for ss in samples for s in ss]
    assert [(s.prompt_id, s.index) for s in flat] == [(f"p{i}", k) for i in range(3) for k in range(2)]
    assert flat == [decode_sample(gen.tok, gen.fmt.end_ids, s.prompt_id, s.index, r) for s, r in zip(flat, rows)]
    for s, r in zip(flat, rows):
        assert s.finished == (r[-1] in gen.fmt.end_ids)
        # the end token counts when finished; every token when cut, a sampled pad id too (the rows
        # carry no filler; the tiny random model can sample its pad id)
        assert s.num_tokens == len(r)
    assert any(s.finished for s in flat) and any(not s.finished for s in flat)


def test_decode_sample_by_hand(gen):
    end = gen.fmt.end_of_turn
    pad = gen.tok.pad_token_id
    words = gen.tok("two plus five", add_special_tokens=False)["input_ids"]
    done = decode_sample(gen.tok, gen.fmt.end_ids, "x", 1, words + [end] + words)
    assert (done.text, done.num_tokens, done.finished) == (gen.tok.decode(words).strip(), len(words) + 1, True)
    cut = decode_sample(gen.tok, gen.fmt.end_ids, "x", 1, words + [pad, pad])  # sampled pads are tokens
    assert (cut.num_tokens, cut.finished) == (len(words) + 2, False)


def greedy(gen, ids: list[int], max_new: int) -> list[int]:
    """transformers' greedy generate of one prompt alone (no padding), cut after its first end id."""
    with torch.no_grad():
        out = gen.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=max_new, eos_token_id=gen.fmt.end_ids,
                                 pad_token_id=gen.tok.pad_token_id)[0, len(ids):].tolist()
    cut = next((i for i, t in enumerate(out) if t in gen.fmt.end_ids), None)
    return out if cut is None else out[:cut + 1]


def test_a_nucleus_of_one_token_is_transformers_greedy_generate(gen):
    ids = prompt_ids(gen)
    assert len({len(p) for p in ids}) == 3  # left padding of different widths in one batch
    rows = gen.sample_ids(ids, 3, params(top_p=1e-9, max_new=16), seed=0)
    expected = [greedy(gen, p, 16) for p in ids]
    assert rows == [e for e in expected for _ in range(3)]


def test_a_long_prompt_is_cut_from_the_left_as_chat_format_cuts_it(gen):
    long = TEXTS[2] * 3
    full = gen.fmt.prompt_ids(long)
    m = len(gen.fmt.prompt_ids(TEXTS[1]))  # the short prompt fits exactly
    assert len(full) > m + 10
    cut = gen.fmt.prompt_ids(long, m)
    assert cut == full[-m:]
    short = HFGenerator.__new__(HFGenerator)  # the same model and tokenizer, max_prompt_length=m
    short.__dict__.update(gen.__dict__, max_prompt=m)
    assert short.cut_prompts([Prompt("a", long), Prompt("b", TEXTS[1])]) == 1
    sample = short.generate([Prompt("a", long)], 2, params(top_p=1e-9, max_new=10))[0]
    row = greedy(gen, cut, 10)
    assert sample == [decode_sample(gen.tok, gen.fmt.end_ids, "a", k, row) for k in range(2)]
