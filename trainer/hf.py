"""HF transformers interop: our state dict / config <-> a transformers BERT directory (docs/hf.md).

`SpanBert` already uses `BertForPreTraining` parameter names, so the conversion is mostly a filter:
export drops nothing but moves the SBO head (`cls.sbo.*`, no transformers class) into its own file;
import canonicalises old spellings (`LayerNorm.gamma/beta`, base-model keys without `bert.`, the tied
`cls.predictions.decoder.*`, the `position_ids` buffer) and then checks config, vocabulary and shapes
before copying a single tensor, so a mismatch is an error that names what disagrees, never a silently
half-initialised model.

Nothing here imports transformers: it is a test/bench-only dependency. Only the tokenizer files of an
export need it (trainer/export.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from contract.tokenizer import Vocabulary, read_vocabulary
from trainer.config import ModelConfig
from trainer.model import SpanBert

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SBO_WEIGHTS_FILE = "sbo_head.safetensors"
SBO_CONFIG_FILE = "sbo_head.json"
SBO_FORMAT = "spanbert-sbo-head/1"
SBO_PREFIX = "cls.sbo."
ENCODER_PREFIXES = ("bert.embeddings.", "bert.encoder.")  # what an import must find; heads are optional

# Weight files in the order transformers itself prefers them; an index names the shards of a split one.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_VOCAB_FILES = ("vocab.txt", "tokenizer.json")

# ModelConfig field <- BertConfig key. Fields absent here (SBO/NSP switches) are ours alone.
_CONFIG_MAP = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "max_position": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "layer_norm_eps": "layer_norm_eps",
    "init_std": "initializer_range",
}
# Fields that change the function the weights compute; the others (dropout, init) only affect training.
_ARCH_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position",
                "type_vocab_size", "layer_norm_eps")


# -- config ----------------------------------------------------------------------------------------
def hf_config_dict(cfg: ModelConfig, pad_token_id: int = 0) -> dict:
    """The BertConfig (config.json) describing our encoder + MLM head."""
    out = {"model_type": "bert", "architectures": ["BertForPreTraining" if cfg.objective.nsp else "BertForMaskedLM"]}
    out.update({hf: getattr(cfg, ours) for ours, hf in _CONFIG_MAP.items()})
    out.update(
        hidden_act="gelu",  # exact erf GeLU, as trainer/model.py
        position_embedding_type="absolute",
        pad_token_id=pad_token_id,
        tie_word_embeddings=True,  # the MLM decoder is the word-embedding matrix
        is_decoder=False,
        add_cross_attention=False,
        dtype="float32",
    )
    return out


def read_hf_config(hf_dir: str | Path) -> dict:
    path = Path(hf_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{hf_dir}: no {CONFIG_FILE}; is this a transformers model directory?")
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("model_type", "bert") != "bert":
        raise ValueError(f"{path}: model_type {raw['model_type']!r}; only BERT checkpoints can be imported")
    if raw.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{path}: hidden_act {raw['hidden_act']!r}; our encoder computes exact (erf) 'gelu' only")
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{path}: position_embedding_type {raw['position_embedding_type']!r}; only 'absolute' is supported")
    return raw


def model_config_from_hf(hf_dir: str | Path, **overrides) -> ModelConfig:
    """A ModelConfig with the HF directory's shape; SBO settings from its sbo_head.json when present.

    `overrides` set any other field (e.g. objective=Objective.MLM). Default: objective mlm+sbo, as a
    SpanBERT run; a BERT checkpoint's NSP head is then simply not imported.
    """
    raw = read_hf_config(hf_dir)
    fields = {ours: raw[hf] for ours, hf in _CONFIG_MAP.items() if hf in raw}
    sbo = _read_sbo_config(hf_dir)
    if sbo is not None:
        fields.update(sbo_position_dim=sbo["sbo_position_dim"], max_sbo_targets=sbo["max_sbo_targets"])
    fields.update(overrides)
    return ModelConfig(**fields)


def sbo_config_dict(cfg: ModelConfig) -> dict:
    """sbo_head.json: what a reader needs to rebuild the SBO head next to a transformers BertModel."""
    return {
        "format": SBO_FORMAT,
        "hidden_size": cfg.hidden_size,
        "sbo_position_dim": cfg.sbo_position_dim,
        "max_sbo_targets": cfg.max_sbo_targets,
        "vocab_size": cfg.vocab_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "hidden_act": "gelu",
        "decoder": "tied: bert.embeddings.word_embeddings.weight in model.safetensors; own bias `bias`",
        "forward": "y = LN2(gelu(layer2.dense(LN1(gelu(layer1.dense([h_{s-1}; h_{e+1}; "
                   "position_embeddings[i-s]])))))); logits = y @ word_embeddings.T + bias",
    }


def _read_sbo_config(hf_dir: str | Path) -> dict | None:
    path = Path(hf_dir) / SBO_CONFIG_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("format") != SBO_FORMAT:
        raise ValueError(f"{path}: format {raw.get('format')!r}, this code reads {SBO_FORMAT!r}")
    return raw


def check_config(hf_dir: str | Path, cfg: ModelConfig) -> None:
    """Raise ValueError listing every architecture field where the HF directory and the run disagree.

    Catches what shapes cannot (num_heads, layer_norm_eps) and says which --set fixes it.
    """
    theirs = model_config_from_hf(hf_dir)
    fields = _ARCH_FIELDS
    if cfg.objective.sbo and _read_sbo_config(hf_dir) is not None:  # the SBO head comes along: its shape must fit too
        fields += ("sbo_position_dim", "max_sbo_targets")
    bad = [f"{name}: HF {getattr(theirs, name)} vs run {getattr(cfg, name)}"
           for name in fields if getattr(theirs, name) != getattr(cfg, name)]
    if bad:
        sets = " ".join(f"--set model.{b.split(':')[0]}={getattr(theirs, b.split(':')[0])}" for b in bad)
        raise ValueError(f"{hf_dir}: the checkpoint's shape differs from the run's model config: "
                         f"{'; '.join(bad)}. Take the shape from the checkpoint ({sets}) or use model_config_from_hf")


# -- vocabulary ------------------------------------------------------------------------------------
def find_vocab(directory: str | Path) -> Path | None:
    """The directory's vocab.txt, else its tokenizer.json, else None."""
    return next((Path(directory) / n for n in _VOCAB_FILES if (Path(directory) / n).is_file()), None)


def hf_lowercase(hf_dir: str | Path) -> tuple[bool, str]:
    """(lower-cases?, where that was read) for a transformers directory: tokenizer_config.json's
    do_lower_case, else tokenizer.json's normaliser, else the vocabulary itself (an uncased vocabulary
    holds no uppercase letter outside its [SPECIAL] tokens)."""
    hf_dir = Path(hf_dir)
    config, tok_json = hf_dir / "tokenizer_config.json", hf_dir / "tokenizer.json"
    if config.is_file() and "do_lower_case" in (conf := json.loads(config.read_text(encoding="utf-8"))):
        return bool(conf["do_lower_case"]), f"{config.name} do_lower_case"
    if tok_json.is_file():
        norm = json.loads(tok_json.read_text(encoding="utf-8")).get("normalizer") or {}
        if "lowercase" in norm:
            return bool(norm["lowercase"]), f"{tok_json.name}'s normaliser"
    vocab = find_vocab(hf_dir)
    tokens = read_vocabulary(vocab).tokens if vocab else ()
    cased = any(ch.isupper() for t in tokens if not (t.startswith("[") and t.endswith("]")) for ch in t)
    return not cased, f"{vocab.name if vocab else 'no vocabulary'} (no casing recorded; read from its letters)"


def check_case(hf_dir: str | Path, shards_lowercase: bool) -> None:
    """--init-from: a cased model on uncased shards (or the reverse) is refused, in one line."""
    lower, source = hf_lowercase(hf_dir)
    if lower != shards_lowercase:
        def name(low: bool) -> str:
            return "uncased" if low else "cased"
        raise ValueError(f"{hf_dir}: the model is {name(lower)} ({source}), the shards are {name(shards_lowercase)}; "
                         f"init from a {name(shards_lowercase)} model or re-run the pipeline with the model's tokenizer")


def check_vocab(path: Path, expected_sha256: str | None, expected_size: int, what: str) -> Vocabulary:
    """Compare a vocabulary file with `what`'s (size always, sha256 when given)."""
    vocab = read_vocabulary(path)
    if len(vocab.tokens) != expected_size:
        raise ValueError(f"{path}: vocabulary has {len(vocab.tokens)} entries, {what} has {expected_size}; "
                         "these weights belong to a different vocabulary")
    if expected_sha256 and vocab.sha256 != expected_sha256:
        raise ValueError(f"{path}: vocabulary sha256 {vocab.sha256[:12]}... differs from {what}'s "
                         f"{expected_sha256[:12]}... (same size, different tokens or order); token ids would not line up")
    return vocab


# -- weights ---------------------------------------------------------------------------------------
def read_weights(hf_dir: str | Path) -> tuple[dict[str, Tensor], list[Path]]:
    """Every tensor of the directory's weights (safetensors or .bin, single or sharded) and the files read."""
    hf_dir = Path(hf_dir)
    name = next((n for n in _WEIGHT_FILES if (hf_dir / n).is_file()), None)
    if name is None:
        raise FileNotFoundError(f"{hf_dir}: no weights; expected one of {list(_WEIGHT_FILES)}")
    files = [hf_dir / name]
    if name.endswith(".index.json"):
        weight_map = json.loads(files[0].read_text(encoding="utf-8"))["weight_map"]
        files = [hf_dir / f for f in sorted(set(weight_map.values()))]
    state: dict[str, Tensor] = {}
    for f in files:
        state.update(load_file(f) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu", weights_only=True))
    return state, files


def canonical_key(key: str) -> str | None:
    """Our name for a checkpoint key; None for keys that carry nothing of ours (buffers, tied copies)."""
    key = key.removeprefix("module.")  # saved from a DDP wrapper
    if key.startswith(("embeddings.", "encoder.", "pooler.")):
        key = "bert." + key  # BertModel.save_pretrained layout
    if key.endswith("position_ids") or key == "cls.predictions.decoder.weight":
        return None  # a buffer, and the decoder tied to bert.embeddings.word_embeddings
    if key == "cls.predictions.decoder.bias":
        return "cls.predictions.bias"  # transformers 4.x saved the tied bias under both names
    # TF-era checkpoints (and the SpanBERT release) spell LayerNorm parameters gamma/beta.
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def from_hf_state_dict(raw: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """(tensors under our names, checkpoint keys that map to nothing)."""
    out: dict[str, Tensor] = {}
    dropped = []
    for key, value in raw.items():
        name = canonical_key(key)
        if name is None:
            dropped.append(key)
        elif name not in out or key != "cls.predictions.decoder.bias":  # the real bias wins over its tied copy
            out[name] = value
    return out, dropped


def to_hf_state_dict(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Our state dict -> (transformers tensors, SBO tensors without the `cls.sbo.` prefix).

    Contiguous clones: safetensors refuses shared or strided storage.
    """
    hf, sbo = {}, {}
    for name, t in state.items():
        target, key = (sbo, name.removeprefix(SBO_PREFIX)) if name.startswith(SBO_PREFIX) else (hf, name)
        target[key] = t.detach().to("cpu").contiguous().clone()
    return hf, sbo


def fresh_pooler(cfg: ModelConfig, seed: int = 0) -> dict[str, Tensor]:
    """An untrained pooler, BERT-initialised from a fixed seed (docs/hf.md, "The pooler")."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(cfg.hidden_size, cfg.hidden_size, generator=g) * cfg.init_std
    return {"bert.pooler.dense.weight": weight, "bert.pooler.dense.bias": torch.zeros(cfg.hidden_size)}


def save_weights(hf: dict[str, Tensor], sbo: dict[str, Tensor], cfg: ModelConfig, out_dir: Path) -> None:
    """model.safetensors (+ sbo_head.safetensors / sbo_head.json when there is an SBO head)."""
    save_file(hf, out_dir / WEIGHTS_FILE, metadata={"format": "pt"})  # transformers wants format=pt
    if sbo:
        save_file(sbo, out_dir / SBO_WEIGHTS_FILE, metadata={"format": "pt", "spanbert": SBO_FORMAT})
        (out_dir / SBO_CONFIG_FILE).write_text(json.dumps(sbo_config_dict(cfg), indent=2) + "\n", encoding="utf-8")


def _check_tied_decoder(raw: dict[str, Tensor], hf_dir: Path) -> None:
    # Our MLM decoder *is* the word-embedding matrix; an untied checkpoint cannot be represented.
    decoder = raw.get("cls.predictions.decoder.weight")
    embeddings = next((raw[k] for k in ("bert.embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight")
                       if k in raw), None)
    if decoder is not None and embeddings is not None and not torch.equal(decoder, embeddings):
        raise ValueError(f"{hf_dir}: cls.predictions.decoder.weight differs from the word embeddings (an untied "
                         "MLM decoder); this model ties them, so the checkpoint's MLM head cannot be imported")


# -- import ----------------------------------------------------------------------------------------
@dataclass
class InitReport:
    """What `load_hf_weights` did: every parameter of the model is in `loaded` or `kept_init`."""

    hf_dir: Path
    files: list[Path]
    vocab_sha256: str
    loaded: list[str] = field(default_factory=list)
    kept_init: list[str] = field(default_factory=list)  # ours, absent from the checkpoint (e.g. a new SBO head)
    unused: list[str] = field(default_factory=list)  # the checkpoint's, with no place in this model

    def summary(self) -> str:
        def groups(names: list[str]) -> str:
            heads = sorted({".".join(n.split(".")[:2]) for n in names})
            return ", ".join(heads) or "none"

        return (f"init from {self.hf_dir} ({', '.join(f.name for f in self.files)}; vocab {self.vocab_sha256[:12]}...): "
                f"{len(self.loaded)} tensors loaded; kept fresh init: {groups(self.kept_init)}; "
                f"unused from the checkpoint: {groups(self.unused)}")


def load_hf_weights(model: SpanBert, hf_dir: str | Path, vocab_sha256: str | None = None) -> InitReport:
    """Initialise `model` in place from a transformers BERT directory; the run's `--init-from`.

    Loads the encoder (required), the MLM head, pooler / NSP head (when the model has them) and the SBO
    head (from sbo_head.safetensors, our export's) when present; everything else keeps its init and is
    listed in the report. Checks first, copies after: the config's shape (check_config), the vocabulary
    (the directory's vocab.txt or tokenizer.json against `vocab_sha256` and the model's vocab_size;
    pass the run's shard vocabulary hash, None skips only the hash), and every tensor's shape.
    Raises ValueError / FileNotFoundError saying what disagrees.
    """
    hf_dir = Path(hf_dir)
    cfg = model.cfg
    check_config(hf_dir, cfg)
    vocab_path = find_vocab(hf_dir)
    if vocab_path is None:
        raise FileNotFoundError(
            f"{hf_dir}: no vocab.txt or tokenizer.json, so the vocabulary cannot be checked; copy in the "
            "vocabulary these weights were trained with (for SpanBERT/spanbert-*-cased: bert-base-cased's vocab.txt)")
    sha = check_vocab(vocab_path, vocab_sha256, cfg.vocab_size, "the run").sha256

    raw, files = read_weights(hf_dir)
    _check_tied_decoder(raw, hf_dir)
    theirs, _ = from_hf_state_dict(raw)
    sbo_file = hf_dir / SBO_WEIGHTS_FILE
    if sbo_file.is_file():
        files.append(sbo_file)
        theirs.update({SBO_PREFIX + k: v for k, v in load_file(sbo_file).items()})

    ours = model.state_dict()
    missing_encoder = sorted(n for n in ours if n.startswith(ENCODER_PREFIXES) and n not in theirs)
    if missing_encoder:
        raise ValueError(f"{hf_dir}: the checkpoint lacks encoder tensors {missing_encoder[:5]}"
                         f"{' ...' if len(missing_encoder) > 5 else ''} ({len(missing_encoder)} in all)")
    bad_shapes = [f"{n}: HF {tuple(theirs[n].shape)} vs run {tuple(t.shape)}"
                  for n, t in ours.items() if n in theirs and theirs[n].shape != t.shape]
    if bad_shapes:
        raise ValueError(f"{hf_dir}: tensor shapes differ from the run's model: {'; '.join(bad_shapes)}")

    # Unused: checkpoint tensors this model has no place for (a BERT NSP head in a SpanBERT run, a classifier).
    report = InitReport(hf_dir, files, sha, unused=sorted(set(theirs) - set(ours)))
    with torch.no_grad():
        for name, t in ours.items():
            if name in theirs:
                t.copy_(theirs[name])  # state_dict tensors alias the parameters; dtype/device cast here
                report.loaded.append(name)
            else:
                report.kept_init.append(name)
    return report

