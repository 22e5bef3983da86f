"""The tiny policy for tests and CI: a 2-layer Llama with grouped-query attention and a byte-level
BPE tokenizer trained in-process on the built-in prompts, saved as an HF directory.

Deterministic for a given seed, built in about a second, no network:

    python -m sppo_nemo.testing DIR [--seed 0]
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts: list[str], vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(out: Path, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 4,
                     kv_heads: int = 2, intermediate: int | None = None) -> Path:
    """A random Llama with the project's tiny tokenizer. vLLM's CPU attention takes head sizes of
    32 and up only (hidden/heads), so vLLM tests build it with hidden=64, heads=2, kv_heads=1."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sppo_nemo.formats.data import builtin_prompts_path

    out = Path(out)
    if (out / "config.json").is_file():
        return out
    rows = [json.loads(line) for line in builtin_prompts_path().read_text().splitlines()]
    texts = [r["prompt"] for r in rows] + [r["reference"] for r in rows]
    tok = train_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1024,
        tie_word_embeddings=False, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out
