"""Masking throughput on one core: blocks/s per scheme on 510-piece blocks of real text, vs HF transformers.

    .venv/bin/python bench/bench_masking.py [--seconds 1.0] [--batch 256]

Ours: the batch API (`mask_flat`: CSR arrays; `mask_batch`: list of MaskedBlock) and the per-block
API (`mask_block`). HF transformers 5.x: `DataCollatorForLanguageModeling` per token, and with
`whole_word_mask=True` (the successor of `DataCollatorForWholeWordMask`), fed offset mappings.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # one core, before numpy or torch load a BLAS

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import numpy as np  # noqa: E402

from contract.annotate import load_nlp  # noqa: E402
from contract.tokenizer import Vocabulary, wordpiece_from_vocab  # noqa: E402
from masking import SCHEMES, Masker, MaskingConfig  # noqa: E402
from masking.corpus import TextBlock, annotate, text_blocks  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
VOCAB = SHARED / "vocab" / "bert-base-cased-vocab.txt"
WIKI = SHARED / "wiki" / "enwiki-sample-extracted.txt"
GOAL_BLOCKS_PER_S = 20_000
GOAL_RATIO = 10


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Blocks per CPU-second of this (single-threaded) process: repeat fn for at least `seconds`.

    CPU time, not wall time, so that other jobs sharing the machine do not distort the figure.
    """
    fn()  # warm-up
    done, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        done += fn()
    return done / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--blocks", type=int, default=1024)
    args = ap.parse_args()
    tok = wordpiece_from_vocab(VOCAB)
    sp = Vocabulary.of(tok)
    blocks, texts = text_blocks(tok, [WIKI], max_blocks=args.blocks + 64)
    blocks = [b for b in blocks if len(b.input_ids) == 510][: args.blocks]
    annotated = blocks[:48]  # spaCy is slow (~8k words/s): annotate a few, reuse them cyclically
    annotated = annotate(annotated, texts, load_nlp())
    unigram = np.bincount(np.concatenate([b.input_ids for b in blocks]), minlength=tok.get_vocab_size())
    print(
        f"{len(blocks)} blocks of 510 pieces from {WIKI.name}; batch {args.batch}; one thread, "
        "blocks per CPU-second\n"
    )

    rows: list[tuple[str, float, float, float]] = []
    for scheme in SCHEMES:
        masker = Masker(
            MaskingConfig(scheme=scheme),
            vocab_size=tok.get_vocab_size(),
            mask_id=sp.mask,
            special_ids=sp.specials,
            unigram_counts=unigram,
        )
        pool = annotated if scheme in ("named_entity", "noun_phrase") else blocks
        rows.append((scheme, *ours(masker, pool, args.batch, len(blocks), args.seconds)))
    hf_token, hf_wwm = hf_rates(blocks, args.seconds)

    print(f"{'scheme':<14}{'mask_flat':>12}{'mask_batch':>12}{'mask_block':>12}   blocks/s")
    for scheme, flat, batch, single in rows:
        print(f"{scheme:<14}{flat:>12,.0f}{batch:>12,.0f}{single:>12,.0f}")
    print(f"{'HF per-token':<14}{hf_token:>12,.0f}   DataCollatorForLanguageModeling, batch 32")
    print(
        f"{'HF whole-word':<14}{hf_wwm:>12,.0f}   DataCollatorForLanguageModeling(whole_word_mask=True), batch 32"
    )
    geo = dict((r[0], r) for r in rows)["geometric"]
    print(f"\ngeometric (mask_batch) / HF whole-word: {geo[2] / hf_wwm:.1f}x  (goal >= {GOAL_RATIO}x)")
    print(f"geometric (mask_batch): {geo[2]:,.0f} blocks/s  (goal >= {GOAL_BLOCKS_PER_S:,})")


def ours(
    masker: Masker, pool: list[TextBlock], batch: int, n: int, seconds: float
) -> tuple[float, float, float]:
    # Built once, outside the timing, as a collator's stream builds them: block i keyed by i.
    blocks = [replace(pool[i % len(pool)], block_index=i) for i in range(n)]
    epoch = iter(range(10**9))

    def batched(call: Callable) -> Callable[[], int]:
        def run() -> int:
            e = next(epoch)
            for lo in range(0, n, batch):
                call(blocks[lo : lo + batch], epoch=e)
            return n

        return run

    def single() -> int:
        e = next(epoch)
        for i in range(256):
            masker.mask_block(blocks[i], epoch=e)
        return 256

    return (
        rate(batched(masker.mask_flat), seconds),
        rate(batched(masker.mask_batch), seconds),
        rate(single, seconds),
    )


def hf_rates(blocks: list[TextBlock], seconds: float) -> tuple[float, float]:
    import torch
    from transformers import BertTokenizerFast, DataCollatorForLanguageModeling

    torch.set_num_threads(1)
    # vocab=, not vocab_file=: transformers 5 ignores vocab_file and builds a 5-token vocabulary, which made
    # the collators' special-token and random-token work trivially cheap (the old HF rows were too fast).
    hf_tok = BertTokenizerFast(vocab=str(VOCAB), do_lower_case=False)
    assert len(hf_tok) == 28_996, len(hf_tok)
    feats = []
    for b in blocks:
        ids = [hf_tok.cls_token_id, *b.input_ids.tolist(), hf_tok.sep_token_id]
        offsets = [(0, 0), *map(tuple, b.char_offsets.tolist()), (0, 0)]
        feats.append(
            {
                "input_ids": ids,
                "offset_mapping": offsets,
                "special_tokens_mask": [1] + [0] * len(b.input_ids) + [1],
            }
        )
    plain = [{"input_ids": f["input_ids"], "special_tokens_mask": f["special_tokens_mask"]} for f in feats]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whole-word mode warns that it turns random replacement off
        per_token = DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.15, seed=0)
        whole_word = DataCollatorForLanguageModeling(
            hf_tok, mlm_probability=0.15, whole_word_mask=True, seed=0
        )

    def run(collator, data) -> Callable[[], int]:
        def go() -> int:
            for lo in range(0, 256, 32):
                collator(data[lo : lo + 32])
            return 256

        return go

    return rate(run(per_token, plain), seconds), rate(run(whole_word, feats), seconds)


if __name__ == "__main__":
    main()
