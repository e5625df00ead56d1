"""Typed run configuration: one dataclass per component, a JSON file per preset (trainer/configs/*.json).

A config file holds the four sections {"model": ..., "data": ..., "optim": ..., "train": ...}; a field
left out takes the default below. The masking settings are the masking package's own `MaskingConfig`,
nested as `data.masking` ({"data": {"masking": {"scheme": "subword"}}}). `--set path.to.field=value`
overrides single fields from the command line (`--set data.masking.scheme=subword`). Every bad value
fails in `load_config` / `Config.from_dict`, with a ValueError naming the field to change.

Two MaskingConfig fields have their one home elsewhere (SHARED_MASKING_FIELDS): the masking seed is
`train.seed` and the SBO target cap is `model.max_sbo_targets` (it sizes the model's position table).
A trainer config may not set them under `data.masking`; the run's effective MaskingConfig is
`Config.masking` (`DataConfig.masking_for` for another seed, e.g. evaluation's fixed masks).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from masking.config import MaskingConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# MaskingConfig fields a trainer config takes from another section (their one home), never from data.masking.
SHARED_MASKING_FIELDS = {"seed": "train.seed", "max_sbo_targets": "model.max_sbo_targets"}
# The fields `data.masking` does hold; before the nesting they sat flat in `data` (refused there: _build).
MASKING_FIELDS = tuple(f.name for f in dataclasses.fields(MaskingConfig) if f.name not in SHARED_MASKING_FIELDS)


class Objective(enum.StrEnum):
    """What a run pre-trains on (the paper's Table 7 rows): the heads the model has and the sequences it
    reads. A str: JSON and `--set model.objective=mlm+nsp` spell it by its value."""

    MLM = "mlm"  # one segment, masked LM only (1seq)
    MLM_SBO = "mlm+sbo"  # one segment, MLM + span boundary objective (§3.2): SpanBERT
    MLM_NSP = "mlm+nsp"  # two segments [CLS] A [SEP] B [SEP], MLM + next-sentence prediction: the BERT baselines

    @property
    def sbo(self) -> bool:
        return self is Objective.MLM_SBO

    @property
    def nsp(self) -> bool:
        """NSP, and with it two segments per sequence (pair mode)."""
        return self is Objective.MLM_NSP


# The three knobs model.objective replaced: refused with the one line saying what to write (see _old_objective).
OLD_OBJECTIVE_KNOBS = {"data": ("mode",), "model": ("use_sbo", "use_nsp")}


@dataclass
class ModelConfig:
    """BERT encoder + heads. Defaults are BERT-base with the cased vocabulary SpanBERT uses."""

    vocab_size: int = 28996
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position: int = 512  # learned absolute positions
    type_vocab_size: int = 2
    dropout: float = 0.1  # hidden dropout, every layer (paper §4.2)
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02
    # The heads (an SBO head, or a pooler + NSP head) and so the sequences the data stream builds: a model
    # setting because it shapes the parameters (checkpoint, export) and is checked on resume with them.
    objective: Objective = Objective.MLM_SBO
    sbo_position_dim: int = 200  # relative position embedding width (§3.2)
    max_sbo_targets: int = 15  # rows of the relative position table (reference: 15 x 200)
    # "auto": unpadded (varlen) flash attention on CUDA, padded SDPA elsewhere; or "padded" / "varlen".
    attention: str = "auto"
    pad_vocab_to: int = 64  # the decoder GEMM is this wide a multiple (padded columns are -inf, never predicted)

    def __post_init__(self) -> None:
        self.objective = _enum(Objective, self.objective, "model.objective")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"model.hidden_size {self.hidden_size} must be divisible by model.num_heads {self.num_heads}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.attention_dropout < 1.0):
            raise ValueError("model.dropout and model.attention_dropout must be in [0, 1)")
        if self.max_sbo_targets < 1 or self.sbo_position_dim < 1 or self.pad_vocab_to < 1:
            raise ValueError("model.max_sbo_targets, model.sbo_position_dim and model.pad_vocab_to must be >= 1")
        if self.attention not in ("auto", "padded", "varlen"):
            raise ValueError(f"model.attention must be auto, padded or varlen, got {self.attention!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class DataConfig:
    """Shard reading, masking (the masking package's own MaskingConfig, nested) and batching."""

    # Scheme and its parameters; seed and max_sbo_targets stay at their defaults here (SHARED_MASKING_FIELDS).
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    batch_size: int = 32  # sequences per micro-batch per rank (ignored when batch_tokens or step_tokens > 0)
    batch_tokens: int = 0  # > 0: micro-batches by padded-token budget instead of a sequence count
    # > 0: padded-token budget per *optimizer step* over all ranks (the paper's 256 x 512 = 131,072), cut
    # into world x grad_accum micro-batches of step_tokens // (world x grad_accum); overrides both above.
    step_tokens: int = 0
    bucket_window: int = 64  # sort this many micro-batches' worth of rows by length before cutting batches
    pad_to_multiple: int = 8  # pad sequence length to a multiple of this (tensor-core friendly shapes)
    num_workers: int = 2  # DataLoader workers per rank (masking runs there)
    vocab_sha256: str = ""  # expected tokenizer identity; "" = take the shards' (recorded in checkpoints)
    holdout_fraction: float = 0.0  # share of *documents* never trained on (split by a hash of doc_id; for evaluation)
    # Sequence-length phases (off: the paper trains at 512 throughout). [[0.9, 128]]: the first 90% of the LR
    # schedule's steps (optim.schedule_steps, else train.max_steps) at sequences of 128 (with [CLS]/[SEP]), cut
    # from the same blocks at word boundaries (trainer/data/phases.py), then model.max_position. Each pair is
    # (share of the steps where this phase ends, sequence length); shares and lengths increase.
    phases: tuple[tuple[float, int], ...] = ()

    def __post_init__(self) -> None:
        for name, home in SHARED_MASKING_FIELDS.items():  # a value here would be silently overridden: refuse it
            if getattr(self.masking, name) != getattr(_DEFAULT_MASKING, name):
                raise ValueError(f"data.masking.{name}={getattr(self.masking, name)!r}: set {home} instead "
                                 f"(the one {name} of the run; masking takes it from there)")
        if self.batch_size < 1 and self.batch_tokens < 1 and self.step_tokens < 1:
            raise ValueError("set data.batch_size >= 1, data.batch_tokens >= 1 or data.step_tokens >= 1")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"data.holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.bucket_window < 1 or self.pad_to_multiple < 1 or self.num_workers < 0:
            raise ValueError("data.bucket_window and data.pad_to_multiple must be >= 1, data.num_workers >= 0")
        self.phases = tuple(tuple(p) for p in self.phases)  # JSON gives lists
        ends, lengths = [p[0] for p in self.phases], [p[1] for p in self.phases]
        if any(not 0 < e < 1 for e in ends) or ends != sorted(set(ends)) or lengths != sorted(set(lengths)) or any(n < 3 for n in lengths):
            raise ValueError(f"data.phases={[list(p) for p in self.phases]}: expected [[share, length], ...] with shares "
                             "in (0, 1) and lengths >= 3, both increasing, e.g. [[0.9, 128]]")

    def masking_for(self, *, seed: int, max_sbo_targets: int) -> MaskingConfig:
        """The masking settings with the two shared fields filled in: the one place they are joined."""
        return replace(self.masking, seed=seed, max_sbo_targets=max_sbo_targets)

    def micro_batch_tokens(self, world: int, grad_accum: int) -> int:
        """Padded-token budget of one micro-batch (0: batches by sequence count)."""
        return self.step_tokens // (world * grad_accum) if self.step_tokens > 0 else self.batch_tokens


_DEFAULT_MASKING = MaskingConfig()


@dataclass(frozen=True)
class Phase:
    """One sequence-length phase: from optimizer step `start_step` on, sequences of at most `max_len`."""

    start_step: int
    max_len: int


@dataclass
class OptimConfig:
    """AdamW + linear warm-up / linear decay (paper §4.2)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled; not applied to biases and LayerNorm (see docs/trainer.md)
    warmup_steps: int = 10_000
    schedule_steps: int = 0  # step where the lr reaches 0; 0 = train.max_steps
    clip_grad_norm: float = 1.0  # 0 disables clipping
    fused: bool = True  # fused AdamW kernel when the device supports it

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives a list
        if self.lr <= 0 or self.eps <= 0 or self.weight_decay < 0:
            raise ValueError("optim.lr and optim.eps must be > 0, optim.weight_decay >= 0")
        if self.warmup_steps < 0 or self.schedule_steps < 0 or self.clip_grad_norm < 0:
            raise ValueError("optim.warmup_steps, optim.schedule_steps and optim.clip_grad_norm must be >= 0")


@dataclass
class TrainConfig:
    """The loop: steps, accumulation, precision, logging, checkpoints, guards."""

    max_steps: int = 2_400_000
    grad_accum: int = 1  # micro-batches per rank per optimizer step
    seed: int = 0  # model init, dropout, shuffling and masking all derive from it
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; or "bf16" / "fp32"
    compile: bool | str = "auto"  # torch.compile the model: "auto" = on CUDA only; or true / false
    ddp_bucket_mb: float = 25.0  # DDP gradient bucket size (torch's default; GPU measurement pending, docs/trainer.md)
    log_every: int = 10
    ckpt_every: int = 1000
    keep_last: int = 3  # checkpoints kept on disk
    max_nonfinite_in_a_row: int = 10  # stop after this many consecutive skipped (non-finite) steps
    max_minutes: float = 0.0  # > 0: wall-clock budget; then save and stop cleanly like on SIGTERM

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.grad_accum < 1:
            raise ValueError("train.max_steps and train.grad_accum must be >= 1")
        if not 0 <= self.seed < 2**64:  # masking's counter-based RNG takes a uint64 key
            raise ValueError(f"train.seed must be in [0, 2**64), got {self.seed}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"train.precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.compile not in ("auto", True, False):
            raise ValueError(f"train.compile must be auto, true or false, got {self.compile!r}")
        if self.ddp_bucket_mb < 1:  # DDP's first bucket is 1 MB; compiled DDP needs the others as large
            raise ValueError("train.ddp_bucket_mb must be >= 1")
        if self.max_minutes < 0:
            raise ValueError("train.max_minutes must be >= 0 (0: no time limit)")
        if self.log_every < 1 or self.ckpt_every < 1 or self.keep_last < 1 or self.max_nonfinite_in_a_row < 1:
            raise ValueError("train.log_every, ckpt_every, keep_last and max_nonfinite_in_a_row must be >= 1")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.data.phases and self.model.objective.nsp:
            raise ValueError("data.phases needs one segment: model.objective mlm or mlm+sbo (mlm+nsp cuts its own A/B segments)")
        if self.data.phases and self.data.phases[-1][1] >= self.model.max_position:
            raise ValueError(f"data.phases: every phase length must be < model.max_position {self.model.max_position} "
                             "(the last phase is model.max_position itself)")

    def phase_schedule(self) -> tuple[Phase, ...]:
        """data.phases in steps: each phase's first step and length; the last phase is model.max_position.
        Phase ends are shares of the LR schedule's length, so resuming with a longer train.max_steps but the
        same optim.schedule_steps keeps the switch where it was."""
        total = self.optim.schedule_steps or self.train.max_steps
        starts = [0] + [round(share * total) for share, _ in self.data.phases]
        lengths = [n for _, n in self.data.phases] + [self.model.max_position]
        return tuple(Phase(s, n) for s, n in zip(starts, lengths, strict=True))

    @property
    def masking(self) -> MaskingConfig:
        """The run's effective masking: data.masking with train.seed and model.max_sbo_targets."""
        return self.data.masking_for(seed=self.train.seed, max_sbo_targets=self.model.max_sbo_targets)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, and plain values only (checkpoints load with weights_only: an enum is its str value);
        from_dict(to_dict()) == self. The shared masking fields are left out (their homes hold them)."""
        raw = dataclasses.asdict(self, dict_factory=lambda kv: {k: v.value if isinstance(v, enum.Enum) else v for k, v in kv})
        for name in SHARED_MASKING_FIELDS:
            del raw["data"]["masking"][name]
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """User input (a config file + --set): every field checked, every bad value a ValueError naming it."""
        return _build(cls, raw, "")


def _build(klass: type, raw: Any, path: str) -> Any:
    """klass(**raw), recursing into nested dataclasses; `path` ("data.masking") prefixes every message."""
    where = f"config section {path!r}" if path else "config"
    if not isinstance(raw, dict):
        raise ValueError(f"{path or 'config'}: expected a JSON object, got {raw!r}")
    hints = typing.get_type_hints(klass)
    known = {f.name for f in dataclasses.fields(klass)}
    if klass is Config and (old := _old_objective(raw)):
        raise ValueError(old)
    if klass is DataConfig and (moved := [k for k in raw if k in MASKING_FIELDS]):  # the spelling before data.masking
        more = f"; the same for {', '.join(moved[1:])}" if moved[1:] else ""
        raise ValueError(f"data.{moved[0]}: the masking settings moved to data.masking; write data.masking.{moved[0]} "
                         f"(--set data.masking.{moved[0]}=..., or {{\"data\": {{\"masking\": {{\"{moved[0]}\": ...}}}}}}){more}")
    if klass is MaskingConfig and (shared := sorted(set(raw) & set(SHARED_MASKING_FIELDS))):
        raise ValueError(f"{path}.{shared[0]}: a trainer config takes it from {SHARED_MASKING_FIELDS[shared[0]]}; "
                         "set that instead")
    if bad := set(raw) - known:
        if not path:
            raise ValueError(f"unknown config sections {sorted(bad)}")
        settable = known - set(SHARED_MASKING_FIELDS) if klass is MaskingConfig else known
        raise ValueError(f"unknown fields in {where}: {sorted(bad)}; known: {sorted(settable)}")
    values = {name: _value(hints[name], value, f"{path}.{name}" if path else name) for name, value in raw.items()}
    try:
        return klass(**values)
    except ValueError as e:
        if klass is MaskingConfig:  # its messages name the bare field ("geometric_p=0: ..."): add where it lives
            raise ValueError(f"{path}.{e}") from None
        raise


def _enum(klass: type[enum.Enum], value: Any, path: str) -> Any:
    """`value` (a member or its name as JSON spells it) as a member of `klass`, or a ValueError listing them."""
    try:
        return klass(value)
    except ValueError:
        raise ValueError(f"{path}={value!r}: choose one of {tuple(m.value for m in klass)}") from None


def _old_objective(raw: dict[str, Any]) -> str | None:
    """The one-line refusal of a config (a file, --set, or a stored run) still spelling the objective with
    data.mode / model.use_sbo / model.use_nsp; it names the model.objective value those knobs meant."""
    sections = {name: raw.get(name) if isinstance(raw.get(name), dict) else {} for name in OLD_OBJECTIVE_KNOBS}
    found = [f"{s}.{k}" for s, keys in OLD_OBJECTIVE_KNOBS.items() for k in keys if k in sections[s]]
    if not found:
        return None
    # the old defaults: one segment, SBO, no NSP
    mode = sections["data"].get("mode", "single")
    sbo, nsp = sections["model"].get("use_sbo", True), sections["model"].get("use_nsp", False)
    meant = {("single", True, False): "mlm+sbo", ("single", False, False): "mlm", ("pair", False, True): "mlm+nsp"}
    if (value := meant.get((mode, sbo, nsp))) is not None:
        write = f'"model": {{"objective": "{value}"}} (--set model.objective={value})'
    else:
        write = (f'"model": {{"objective": ...}}, one of mlm | mlm+sbo | mlm+nsp (data.mode={mode!r} with '
                 f"model.use_sbo={json.dumps(sbo)}, model.use_nsp={json.dumps(nsp)} was never a legal combination)")
    return f"{', '.join(found)}: replaced by the one setting model.objective; drop {'them' if found[1:] else 'it'} and write {write}"


def _value(hint: Any, value: Any, path: str) -> Any:
    """`value` checked against the field's type (JSON gives lists for tuples); nested dataclasses built."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum(hint, value, path)
    if not _matches(hint, value):
        raise ValueError(f"{path}={value!r}: expected {hint.__name__ if isinstance(hint, type) else hint}")
    return tuple(value) if typing.get_origin(hint) is tuple else value


def _matches(hint: Any, value: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(a, value) for a in args)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        return len(kinds) == len(value) and all(_matches(k, v) for k, v in zip(kinds, value, strict=True))
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def stored_config(raw: dict[str, Any]) -> Config:
    """The Config of a stored run (checkpoint state["config"], RUN_DIR/config.json), checked like user input:
    a run stored with data.mode / model.use_sbo / model.use_nsp is refused with the line naming model.objective."""
    return Config.from_dict(raw)


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A bundled preset name ("tiny", "base", "large") or a JSON path, then `path.to.field=value` overrides."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        bundled = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise FileNotFoundError(f"config {name_or_path!r}: no such file, and not one of the bundled {bundled}")
    raw = json.loads(path.read_text(encoding="utf-8"))
    for item in overrides:
        key, sep, value = item.partition("=")
        *parents, name = key.split(".")
        if not sep or not parents or not all(key.split(".")):
            raise ValueError(f"--set expects section.field=value (or section.sub.field=value), got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value  # bare strings: --set data.masking.scheme=subword
        node = raw
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {'.'.join(parents[: i + 1])} is a value, not a section")
        node[name] = parsed
    return Config.from_dict(raw)
