"""python -m trainer.export RUN_DIR_OR_CHECKPOINT OUT_DIR [--vocab V | --tokenizer T | --data SHARDS] [--encoder-only]

Writes a transformers BERT directory (config.json, model.safetensors, vocab.txt, tokenizer.json,
tokenizer_config.json) plus the SBO head (sbo_head.safetensors, sbo_head.json) and spanbert_export.json
(provenance). Layout, pooler decision and load reports: docs/hf.md.

The checkpoint records its vocabulary's sha256, not the vocabulary: the vocabulary comes from --vocab,
--tokenizer or --data (the shard directory), else from a vocab.txt / tokenizer.json in the run
directory; it must hash to the checkpoint's vocab_sha256.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from torch import Tensor

from contract.cli import run_main
from contract.schema import read_manifest
from contract.tokenizer import Vocabulary
from trainer import checkpoint
from trainer.config import ModelConfig
from trainer.hf import (
    CONFIG_FILE,
    SBO_CONFIG_FILE,
    SBO_WEIGHTS_FILE,
    check_vocab,
    find_vocab,
    fresh_pooler,
    hf_config_dict,
    save_weights,
    to_hf_state_dict,
)

EXPORT_INFO_FILE = "spanbert_export.json"


def export_model(
    state: dict[str, Tensor], cfg: ModelConfig, vocab: Vocabulary, out_dir: str | Path, *,
    encoder_only: bool = False, info: dict[str, Any] | None = None,
) -> Path:
    """Write `state` (a SpanBert state dict) as a transformers directory; returns out_dir.

    Default layout: every trained tensor, nothing invented: encoder + MLM head (+ pooler and NSP head
    when the run had NSP) in model.safetensors, the SBO head beside it. `encoder_only`: a BertModel
    directory (encoder + pooler, no heads) that BertModel loads with nothing missing or unexpected; a
    run without NSP never trained a pooler, so it gets a freshly initialised one (fresh_pooler).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(vocab.tokens) != cfg.vocab_size:
        raise ValueError(f"{vocab.path}: {len(vocab.tokens)} tokens, the model's vocab_size is {cfg.vocab_size}")
    hf, sbo = to_hf_state_dict(state)
    pooler = "trained (NSP)" if "bert.pooler.dense.weight" in hf else "none"
    config = hf_config_dict(cfg, pad_token_id=vocab.tokens.index("[PAD]") if "[PAD]" in vocab.tokens else 0)
    if encoder_only:
        if pooler == "none":
            hf.update(fresh_pooler(cfg))
            pooler = "fresh (untrained, N(0, init_std) from seed 0)"
        # BertModel.save_pretrained's own layout: no `bert.` prefix, no heads.
        hf = {k.removeprefix("bert."): v for k, v in hf.items() if k.startswith("bert.")}
        sbo = {}
        config["architectures"] = ["BertModel"]
    for stale in (SBO_WEIGHTS_FILE, SBO_CONFIG_FILE):  # a previous export's SBO head must not linger
        (out_dir / stale).unlink(missing_ok=True)
    save_weights(hf, sbo, cfg, out_dir)
    _write_json(out_dir / CONFIG_FILE, config)
    save_tokenizer(vocab, cfg.max_position, out_dir)
    _write_json(out_dir / EXPORT_INFO_FILE, {
        **(info or {}), "vocab_sha256": vocab.sha256, "layout": "encoder" if encoder_only else "pretraining",
        "pooler": pooler, "sbo_head": bool(sbo), "model_config": dataclasses.asdict(cfg),
    })
    return out_dir


def save_tokenizer(vocab: Vocabulary, max_length: int, out_dir: Path) -> None:
    """vocab.txt + a BertTokenizerFast built locally from it (tokenizer.json, tokenizer_config.json)."""
    try:
        from transformers import BertTokenizerFast
    except ImportError as e:  # transformers is a test/bench extra, not a core dependency
        raise SystemExit("exporting tokenizer files needs transformers: pip install -e '.[bench]'") from e
    # transformers 5 takes the vocabulary itself (`vocab=`), not a vocab_file path.
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab.tokens)}, do_lower_case=vocab.lowercase,
                            model_max_length=max_length)
    tok.save_pretrained(str(out_dir))
    (out_dir / "vocab.txt").write_text("\n".join(vocab.tokens) + "\n", encoding="utf-8")


def locate_vocab(ckpt: Path, vocab: str | None, tokenizer: str | None, data: str | None) -> Path:
    """The vocabulary file to export, from the options or else the run directory (RUN_DIR/checkpoints/x.pt)."""
    given = [p for p in (vocab, tokenizer) if p]
    if data:
        given.append(str(read_manifest(data).tokenizer_path))
    if len(given) > 1:
        raise ValueError("give at most one of --vocab, --tokenizer, --data")
    if given:
        return Path(given[0])
    run_dir = ckpt.parent.parent
    found = find_vocab(run_dir)
    if found is None:
        raise FileNotFoundError(
            f"{ckpt}: the checkpoint records only its vocabulary's sha256 and {run_dir} holds no vocab.txt or "
            "tokenizer.json; pass --data SHARD_DIR (the shards it was trained on), --vocab or --tokenizer")
    return found


def export_checkpoint(
    src: str | Path, out_dir: str | Path, *, vocab: str | None = None, tokenizer: str | None = None,
    data: str | None = None, encoder_only: bool = False, overwrite: bool = False,
) -> Path:
    """`python -m trainer.export` as a function. A non-empty `out_dir` is refused unless `overwrite`."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass --overwrite to write the export into it")
    ckpt = checkpoint.load(src)
    cfg = ckpt.config.model
    vocab_path = locate_vocab(ckpt.path, vocab, tokenizer, data)
    v = check_vocab(vocab_path, ckpt.vocab_sha256, cfg.vocab_size, f"checkpoint {ckpt.path.name}")
    info = {"source": str(ckpt.path.resolve()), "step": ckpt.step, "checkpoint_sha256": ckpt.sha256}
    return export_model(ckpt.model, cfg, v, out_dir, encoder_only=encoder_only, info=info)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__.split("\n\n")[1])
    p.add_argument("src", metavar="RUN_DIR_OR_CHECKPOINT", help="a run directory (newest valid checkpoint) or a step-N.pt")
    p.add_argument("out", metavar="OUT_DIR", help="the transformers directory to write")
    p.add_argument("--vocab", help="the run's vocab.txt")
    p.add_argument("--tokenizer", help="the run's tokenizer.json")
    p.add_argument("--data", help="the run's shard directory (its manifest names the vocabulary)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR (refused otherwise)")
    p.add_argument("--encoder-only", action="store_true",
                   help="write a BertModel directory (encoder + pooler, no heads) instead of the pre-training layout")
    args = p.parse_args(argv)
    out = export_checkpoint(args.src, args.out, vocab=args.vocab, tokenizer=args.tokenizer, data=args.data,
                            encoder_only=args.encoder_only, overwrite=args.overwrite)
    print(f"[export] wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
