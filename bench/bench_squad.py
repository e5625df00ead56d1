"""SQuAD fine-tuning benchmarks (CPU): the training step vs transformers' BertForQuestionAnswering on the same
batch and weights, and feature building (tokenise + windows) in questions per second on one core.

    .venv/bin/python bench/bench_squad.py                        # base shape, batch 4 x 384, ../shared dev-v1.1
    .venv/bin/python bench/bench_squad.py --shape mini --squad demo/squad/dev-v1.1-excerpt.json
Goals: step time <= 1.0x HF's; >= 2,000 questions/s building features on one core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the tokenizers thread pool: one core, before it starts
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from contract.tokenizer import load_tokenizer  # noqa: E402
from finetune.data import load_squad  # noqa: E402
from finetune.features import FeatureConfig, build_features, collate  # noqa: E402
from finetune.model import BertForQuestionAnswering, qa_loss  # noqa: E402
from trainer.config import ModelConfig  # noqa: E402
from trainer.model import decay_groups  # noqa: E402

SHAPES = {"mini": (4, 256, 4, 1024), "base": (12, 768, 12, 3072)}  # layers, hidden, heads, ffn
SHARED = REPO.parent / "shared" / "data"


def feature_speed(squad: Path, vocab: Path, repeats: int) -> tuple[int, float]:
    """(questions, best seconds) for build_features(training=True) with the paper's 512 / 128 / 64."""
    torch.set_num_threads(1)
    data = load_squad(squad)
    tok = load_tokenizer(vocab)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        build_features(data, tok, FeatureConfig(), training=True)
        times.append(time.perf_counter() - t0)
    return len(data.questions), min(times)


def step_times(shape: str, batch: int, seq: int, steps: int, squad: Path, vocab: Path, threads: int) -> dict[str, float]:
    """Median seconds per training step (forward, loss, backward, AdamW), ours and HF's, alternating."""
    from transformers import BertConfig
    from transformers import BertForQuestionAnswering as HFQA

    torch.set_num_threads(threads)
    layers, hidden, heads, ffn = SHAPES[shape]
    tok = load_tokenizer(vocab)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_layers=layers, num_heads=heads,
                      intermediate_size=ffn, objective="mlm")
    data = load_squad(squad)
    feats = build_features(data, tok, FeatureConfig(max_seq_length=seq), training=True)
    # Full-length windows with an answer: the same real batch for both models.
    chosen = [w for w in feats.windows if len(w.input_ids) == seq and w.start_position > 0][:batch]
    if len(chosen) < batch:
        raise SystemExit(f"{squad}: fewer than {batch} full {seq}-piece windows with an answer")
    b = collate(chosen, pad_id=tok.token_to_id("[PAD]"))
    torch.manual_seed(0)
    ours = BertForQuestionAnswering(cfg)
    hf = HFQA(BertConfig(vocab_size=cfg.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=cfg.max_position,
                         layer_norm_eps=cfg.layer_norm_eps))
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)  # same weights, rename-free
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)

    def ours_step(opt):
        start, end = ours(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        (qa_loss(start, end, b) / batch).backward()

    def hf_step(opt):
        hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"].long(), token_type_ids=b["token_type_ids"],
           start_positions=b["start_positions"], end_positions=b["end_positions"]).loss.backward()

    runs = {"ours": (ours, ours_step), "HF BertForQuestionAnswering": (hf, hf_step)}
    opts = {k: torch.optim.AdamW(decay_groups(m, 0.01), lr=2e-5, fused=True) for k, (m, _) in runs.items()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(steps + 1):  # the first step of each is a warm-up
        for name, (model, fn) in runs.items():
            model.train()
            t0 = time.perf_counter()
            fn(opts[name])
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            if i:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--squad", type=Path, default=SHARED / "squad" / "dev-v1.1.json")
    p.add_argument("--vocab", type=Path, default=SHARED / "vocab" / "bert-base-cased-vocab.txt")
    p.add_argument("--shape", choices=SHAPES, default="base")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=384)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=2, help="feature-building repetitions (best is reported)")
    args = p.parse_args()

    n, secs = feature_speed(args.squad, args.vocab, args.repeats)
    print(f"\n## SQuAD feature building ({args.squad.name}, max_seq 512, stride 128, max query 64; one core)\n")
    print("| questions | seconds | questions/s | goal |\n|---:|---:|---:|---|")
    print(f"| {n:,} | {secs:.2f} | {n / secs:,.0f} | >= 2,000 ({'met' if n / secs >= 2000 else 'missed'}) |")

    t = step_times(args.shape, args.batch, args.seq, args.steps, args.squad, args.vocab, args.threads)
    ref = t["HF BertForQuestionAnswering"]
    print(f"\n## SQuAD fine-tuning step ({args.shape}, batch {args.batch} x {args.seq}, CPU, {args.threads} threads; "
          f"median of {args.steps})\n")
    print("| model | step ms | vs HF |\n|---|---:|---:|")
    for name, s in t.items():
        print(f"| {name} | {1000 * s:,.0f} | {s / ref:.2f}x |")
    print(f"\ngoal <= 1.0x: {'met' if t['ours'] <= ref else 'missed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
