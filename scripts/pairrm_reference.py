"""llm-blender's own PairRM code as a reference, run inside the separate llm-blender virtualenv
(scripts/blender_venv.sh). It never imports sppo_nemo: our side and this side exchange only
checkpoint directories and JSON files.

    python scripts/pairrm_reference.py train-spm --corpus texts.txt --out DIR [--vocab-size N]
    python scripts/pairrm_reference.py make-hf  --config cfg.json --tokenizer TOKDIR --out DIR [--seed S]
    python scripts/pairrm_reference.py logits   --layout hf|original --model DIR --cases cases.json --out out.json
    python scripts/pairrm_reference.py judge    --model DIR --cases cases.json --out out.json [--probability P]
    python scripts/pairrm_reference.py bench    --tokenizer TOKDIR --data rows.jsonl [--rows N] [--batch-sizes 1,8]

``train-spm``: a small sentencepiece unigram model with DeBERTa-v3's special pieces ([PAD]=0,
[CLS]=1, [SEP]=2, [UNK]=3; nmt_nfkc normalization, so a precompiled map) as a bare ``spm.model``
tokenizer directory, like microsoft/deberta-v3-large's.
``make-hf``: a random ``llm_blender.pair_ranker.pairrm.DebertaV2PairRM`` (the PairRM-hf class)
saved with its own ``save_pretrained``, heads re-initialised so logits are O(1).
``logits``: the K×K logit matrix C[i, j] of every case ({"prompt", "candidates"}), each prompt
alone (batch size 1, as the reference SPPO scripts run it):
  - ``original``: ``Blender.loadranker(DIR)`` then the ranker's collator and ``_full_predict``
    (what ``Blender.rank`` runs), plus ``Blender.rank(return_scores=True)``;
  - ``hf``: ``DebertaV2PairRM.from_pretrained(DIR)`` fed the ids llm-blender's
    ``CrossCompareCollator`` and ``CrossCompareReranker.cat_ids`` build.
``judge``: our optional ``llm_blender`` backend (sppo_nemo.backends.llm_blender_judge, from this
checkout on PYTHONPATH) on an original-layout checkpoint: its logit and preference matrices.
``bench``: ``Blender.rank`` with a full-size PairRM (DeBERTa-v3-large shape, random weights,
assembled in memory from llm-blender's classes: no multi-GB files), ordered pairs per second;
``--serve``: build once, say ``{"ready": true}``, then answer each stdin line
``{"rows": [...], "batch_size": B}`` with ``{"seconds": ...}`` for ranking those rows (so that a
benchmark can alternate it with our judge, row by row, in one window); an empty line ends it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
import types
from pathlib import Path

import torch

logging.disable(logging.WARNING)


def _reinit_heads(head, seed: int) -> None:
    g = torch.Generator().manual_seed(seed + 1000)
    for m in head:
        if isinstance(m, torch.nn.Linear):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (3.0 / m.in_features ** 0.5))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def train_spm(args) -> None:
    import sentencepiece as spm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=args.corpus, model_prefix=str(out / "spm"), vocab_size=args.vocab_size, model_type="unigram",
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]",
        unk_piece="[UNK]", normalization_rule_name="nmt_nfkc", minloglevel=2)
    (out / "spm.vocab").unlink()
    (out / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "vocab_type": "spm"}))
    print(json.dumps({"out": str(out)}))


def make_hf(args) -> None:
    from transformers import AutoTokenizer, DebertaV2Config

    from llm_blender.pair_ranker.pairrm import DebertaV2PairRM

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    cfg = json.loads(Path(args.config).read_text())
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (
        ("source_prefix_id", "<|source|>"), ("cand1_prefix_id", "<|candidate1|>"),
        ("cand2_prefix_id", "<|candidate2|>"), ("cand_prefix_id", "<|candidate|>"))}
    config = DebertaV2Config(**cfg, n_tasks=1, drop_out=0.05, sep_token_id=tok.sep_token_id, **ids)
    torch.manual_seed(args.seed)
    model = DebertaV2PairRM(config).eval()
    _reinit_heads(model.head_layer, args.seed)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    # the original tokenizer.json, byte for byte (save_pretrained may re-serialise it)
    shutil.copy(Path(args.tokenizer) / "tokenizer.json", Path(args.out) / "tokenizer.json")
    print(json.dumps({"out": args.out, **ids}))


def _pair_ids(collated, i, j, tok, sep_id):
    """The ids CrossCompareReranker._forward builds for candidates (i, j) of one collated prompt."""
    from llm_blender.pair_ranker.ranker import CrossCompareReranker

    c1 = collated["candidate_ids"][:, i].clone()
    c2 = collated["candidate_ids"][:, j].clone()
    c1[c1 == tok.cand_prefix_id] = tok.cand1_prefix_id
    c2[c2 == tok.cand_prefix_id] = tok.cand2_prefix_id
    return CrossCompareReranker.cat_ids(
        types.SimpleNamespace(sep_token_id=sep_id),
        collated["source_ids"], collated["source_attention_mask"],
        c1, collated["candidate_attention_mask"][:, i], c2, collated["candidate_attention_mask"][:, j])


def logits(args) -> None:
    cases = json.loads(Path(args.cases).read_text())
    out = {"layout": args.layout, "logits": [], "scores": []}
    t0 = time.perf_counter()
    if args.layout == "original":
        import llm_blender

        blender = llm_blender.Blender(blender_config=llm_blender.BlenderConfig(device="cpu", use_tqdm=False))
        blender.loadranker(args.model, device="cpu")
        for case in cases:
            batch = blender.ranker_collator([{"index": 0, "source": case["prompt"], "candidates": case["candidates"]}])
            batch = {k: v for k, v in batch.items() if v is not None}
            with torch.no_grad():
                c = blender.ranker._full_predict(**batch)["logits"][0]
            out["logits"].append(c.double().tolist())
            scores = blender.rank([case["prompt"]], [case["candidates"]], return_scores=True, batch_size=1)
            out["scores"].append([float(x) for x in scores[0]])
    else:
        from transformers import AutoTokenizer

        from llm_blender.pair_ranker.collator import CrossCompareCollator
        from llm_blender.pair_ranker.pairrm import DebertaV2PairRM

        model = DebertaV2PairRM.from_pretrained(args.model).eval()
        tok = AutoTokenizer.from_pretrained(args.model)
        collator = CrossCompareCollator(1224, tok, 412)
        for case in cases:
            collated = collator([{"source": case["prompt"], "candidates": case["candidates"]}])
            k = len(case["candidates"])
            c = torch.zeros(k, k, dtype=torch.float64)
            for i in range(k):
                for j in range(k):
                    if i != j:
                        ids, mask = _pair_ids(collated, i, j, tok, tok.sep_token_id)
                        with torch.no_grad():
                            c[i, j] = model(input_ids=ids, attention_mask=mask).logits[0].double()
            out["logits"].append(c.tolist())
    out["seconds"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(out))


def judge(args) -> None:
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from sppo_nemo.backends.llm_blender_judge import LLMBlenderJudge
    from sppo_nemo.schema.protocols import Prompt

    cases = json.loads(Path(args.cases).read_text())
    j = LLMBlenderJudge(args.model, device="cpu", dtype="fp32", probability=args.probability)
    prompts = [Prompt(f"p{n}", c["prompt"]) for n, c in enumerate(cases)]
    responses = [c["candidates"] for c in cases]
    out = {"logits": [m.tolist() for m in j.logit_matrices(prompts, responses)],
           "matrices": [m.tolist() for m in j.preference_matrices(prompts, responses)],
           "compare": j.compare(prompts[:1] * 2, [responses[0][0], responses[0][1]],
                                [responses[0][1], responses[0][0]]).tolist()}
    Path(args.out).write_text(json.dumps(out))


def bench(args) -> None:
    import llm_blender
    from transformers import DebertaV2Config, DebertaV2Model

    from llm_blender.pair_ranker.config import RankerConfig
    from llm_blender.pair_ranker.model_util import build_collator, build_tokenizer
    from llm_blender.pair_ranker.ranker import CrossCompareReranker

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()][:args.rows]
    prompts = [r["prompt"] for r in rows]
    cands = [r["candidates"] for r in rows]
    k = len(cands[0])
    tok = build_tokenizer(args.tokenizer)
    collator = build_collator("pairranker", tok, 1224, 412)  # adds the prefix tokens
    config = DebertaV2Config(
        vocab_size=128005, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        hidden_act="gelu", max_position_embeddings=512, type_vocab_size=0, layer_norm_eps=1e-7,
        relative_attention=True, max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm",
        share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False, pad_token_id=0)
    torch.manual_seed(0)
    encoder = DebertaV2Model(config)
    encoder.config.out_hidden_state_size = config.hidden_size
    rc = RankerConfig(ranker_type="pairranker", model_type="deberta", model_name=args.tokenizer,
                      source_maxlength=1224, candidate_maxlength=412, n_tasks=1, drop_out=0.05,
                      inference_mode="full", fp16=False, device="cpu")
    ranker = CrossCompareReranker(encoder, rc, tok).float().eval()
    blender = llm_blender.Blender(blender_config=llm_blender.BlenderConfig(device="cpu", use_tqdm=False))
    blender.ranker, blender.ranker_tokenizer, blender.ranker_collator, blender.ranker_config = ranker, tok, collator, rc
    blender.rank(["warm up"], [["a", "b"]], return_scores=True, batch_size=1)
    if args.serve:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                break
            ask = json.loads(line)
            t0 = time.perf_counter()
            blender.rank([prompts[i] for i in ask["rows"]], [cands[i] for i in ask["rows"]], return_scores=True,
                         batch_size=ask["batch_size"])
            print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
        return
    results = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        t0 = time.perf_counter()
        blender.rank(prompts, cands, return_scores=True, batch_size=bs)
        dt = time.perf_counter() - t0
        pairs = len(rows) * k * (k - 1)
        results.append({"batch_size": bs, "pairs": pairs, "seconds": dt, "pairs_per_s": pairs / dt})
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train-spm")
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=300)
    p = sub.add_parser("make-hf")
    p.add_argument("--config", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("logits")
    p.add_argument("--layout", choices=["hf", "original"], required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--cases", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("judge")
    p.add_argument("--model", required=True)
    p.add_argument("--cases", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--probability", default="symmetric")
    p = sub.add_parser("bench")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--serve", action="store_true", help="answer stdin requests row by row (see the docstring)")
    p.add_argument("--out")
    args = ap.parse_args(argv)
    {"train-spm": train_spm, "make-hf": make_hf, "logits": logits, "judge": judge, "bench": bench}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
