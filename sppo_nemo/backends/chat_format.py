"""How prompts and responses become token ids, and generated ids become a Sample: one way for
generation (transformers and vLLM), training (torch and megatron) and scoring. No transformers
import: it works on the tokenizer object it is given (``hf.load_tokenizer``).

    prompt ids   = chat_template([system?, user: x], add_generation_prompt=True), the last
                   max_prompt_length of them
    response ids = the ids the generator sampled (Sample.ids: the end-of-turn id last if it was
                   sampled), or for a response known by its text alone
                   tokenize(y) + [end-of-turn]   (end-of-turn only if generation finished)

One truncation rule: a response longer than trainer.max_length leaves room for is cut to the
prefix that fits (so a cut response ends without end-of-turn, as one cut at max_new_tokens does).
Generation stops each prompt's samples at that same length (:meth:`ChatFormat.response_budget`),
so a sampled response is never cut again by training or scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from sppo_nemo.maths.packing import group
from sppo_nemo.schema.protocols import PointRow, Sample


@dataclass(frozen=True)
class Encoded:
    prompt_ids: list[int]
    response_ids: list[int]


class ChatFormat:
    """How prompts and responses become token ids, shared by generation, training and scoring."""

    def __init__(self, tokenizer, system_prompt: str | None):
        self.tok = tokenizer
        self.system_prompt = system_prompt
        self.end_ids = self._end_ids()

    def _end_ids(self) -> list[int]:
        ids = []
        for t in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
            tid = self.tok.convert_tokens_to_ids(t)
            if isinstance(tid, int) and tid != self.tok.unk_token_id and tid is not None:
                ids.append(tid)
        if self.tok.eos_token_id is not None and self.tok.eos_token_id not in ids:
            ids.append(self.tok.eos_token_id)
        return ids

    @property
    def end_of_turn(self) -> int:
        return self.end_ids[0]

    def prompt_text(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        if self.tok.chat_template:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return (self.system_prompt + "\n\n" if self.system_prompt else "") + prompt + "\n"

    def prompt_ids(self, prompt: str, max_prompt: int | None = None) -> list[int]:
        """The chat-formatted prompt's ids; longer than ``max_prompt``, cut from the left (the end,
        with the generation prompt, must stay intact). Generation, training and scoring cut alike."""
        p = self.tok(self.prompt_text(prompt), add_special_tokens=False)["input_ids"]
        return p[-max_prompt:] if max_prompt is not None and len(p) > max_prompt else p

    def encode(self, prompt: str, response: str, finished: bool, max_prompt: int | None = None,
               max_length: int | None = None, ids: Sequence[int] | None = None) -> Encoded:
        """The (prompt, response) pair as scored: the response's sampled ``ids`` when given, else its
        text tokenised (and end-of-turn appended when ``finished``); cut to ``max_length`` in all."""
        p = self.prompt_ids(prompt, max_prompt)
        if ids is not None:
            r = list(ids)
        else:
            r = self.tok(response, add_special_tokens=False)["input_ids"]
            if finished:
                r = r + [self.end_of_turn]
        if max_length is not None and len(p) + len(r) > max_length:
            r = r[: max(0, max_length - len(p))]
        if not r:
            r = [self.end_of_turn]  # an empty response is still the event "end of turn at once"
        return Encoded(p, r)

    def response_budget(self, prompt_ids: Sequence[int], max_new_tokens: int, max_length: int | None) -> int:
        """How many tokens generation may sample after ``prompt_ids``: max_new_tokens, and no more than
        ``max_length`` (the trainer's) leaves room for, so training and scoring never cut a sample."""
        if max_length is None:
            return max_new_tokens
        return max(1, min(max_new_tokens, max_length - len(prompt_ids)))


def encode_rows(fmt: ChatFormat, rows, max_prompt: int, max_len: int) -> list[list[Encoded]]:
    """Token ids of each training row: [response] for a PointRow, [chosen, rejected] for a PairRow.
    Both LM trainers (torch, megatron) train on these tokens."""
    out = []
    for r in rows:
        if isinstance(r, PointRow):
            out.append([fmt.encode(r.prompt, r.response, r.finished, max_prompt, max_len, r.response_ids)])
        else:
            out.append([fmt.encode(r.prompt, r.chosen, r.chosen_finished, max_prompt, max_len, r.chosen_ids),
                        fmt.encode(r.prompt, r.rejected, r.rejected_finished, max_prompt, max_len, r.rejected_ids)])
    return out


def rows_from_text(rows) -> int:
    """How many rows have a response known by its text alone (no sampled ids), and so are tokenised."""
    return sum((r.response_ids is None) if isinstance(r, PointRow) else (r.chosen_ids is None or r.rejected_ids is None)
               for r in rows)


def row_tokens(seqs: list[list[Encoded]], ids) -> int:
    return sum(len(e.prompt_ids) + len(e.response_ids) for i in ids for e in seqs[i])

def packed_tokens(seqs: list[list[Encoded]], ids) -> int:
    """The tokens the decoder runs over for rows ``ids`` packed (:func:`row_tokens` counts each
    sequence's prompt; packed, a run of sequences with one prompt counts it once)."""
    batch = [e for i in ids for e in seqs[i]]
    return sum(len(batch[g[0]].prompt_ids) + sum(len(batch[j].response_ids) for j in g)
               for g in group([e.prompt_ids for e in batch]))


def decode_sample(tok, end_ids: Sequence[int], prompt_id: str, k: int, row: Sequence[int]) -> Sample:
    """A generated row of token ids as a Sample: cut at the first end-of-turn id (finished; the end
    token is the last of ``ids`` and counts in num_tokens, not in the text), else every token (cut
    at max_new_tokens). The text is for the judge and the reader; ``ids`` are what is trained. Rows
    carry no filler: both generators (transformers, vLLM) return each row's own tokens only, so a
    sampled pad id is a token like any other. Both make their samples here."""
    ends = set(end_ids)
    cut = next((i for i, t in enumerate(row) if t in ends), None)
    finished = cut is not None
    ids = [int(t) for t in (row[:cut + 1] if finished else row)]
    text = tok.decode(ids[:-1] if finished else ids, skip_special_tokens=True).strip()
    return Sample(prompt_id, k, text, len(ids), finished, ids)
