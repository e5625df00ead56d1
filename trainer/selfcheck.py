"""Start-up self-checks of the two CUDA paths the CPU tests cannot run: varlen flash attention (a private
torch op whose signature has changed between releases) and torch.compile.

Both settings default to "auto", which means: use the fast path, check it on this machine before step 1,
and if it fails fall back (varlen -> padded SDPA, compiled -> eager) with ONE warning line naming the
path, the reason and the `--set` that pins the fall-back. An explicit `model.attention=varlen` or
`train.compile=true` makes the same failure an error (exit status 2, one line). The path actually used is
logged and written into every metrics line (`attention`, `compiled`).

- Attention (`choose_attention`): on the first real batch's packing (its real sequence lengths), random
  q/k/v in the autocast dtype go through the flash kernel and through padded SDPA, forward and backward;
  output and the three gradients must agree within bf16 tolerance. Before that, the op must exist and our
  call (model.flash_call) must bind to its schema. The comparison (`compare_attention`) takes the two
  attention functions as arguments, so its logic runs and is tested on CPU.
- Compile (`first_compiled_step`): torch.compile is lazy, so compilation happens in the first step. If that
  step raises, the gradients are cleared, the RNG is put back to where it was before the step, and the
  step runs eager: the run is then exactly an eager run. (A compiled step that runs but computes wrong
  values is not caught: compiled dropout draws other random numbers, so there is no exact reference.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from trainer import checkpoint
from trainer.model import Packing, SpanBert, flash_call, flash_op, flash_varlen_attention, padded_attention

# Relative L2 error allowed between the flash kernel and padded SDPA, for the output and each gradient. bf16
# keeps 8 bits of mantissa (2^-8 = 0.4% per rounding): on CPU, bf16 padded SDPA against a per-sequence
# attention differs by 0.46-0.56% (output, dq, dk, dv; BERT-base heads, lengths 37-512). A real fault is far
# above: attending across sequence boundaries gives 86%, a gradient off by 1.5x gives 50%.
REL_TOL = {torch.bfloat16: 3e-2, torch.float16: 1.5e-2, torch.float32: 1e-4}

AttentionFn = Callable[[Tensor, Tensor, Tensor, Packing, float], Tensor]
T = TypeVar("T")


class SelfCheckError(RuntimeError):
    """An explicitly requested path failed its self-check (one line: the path, the reason, the way out)."""


@dataclass
class RunPaths:
    """The paths this run actually uses, for the log and every metrics line."""

    attention: str = "padded"  # "varlen" (flash or, off CUDA, its padded reference) or "padded"
    compiled: bool = False

    def metrics(self) -> dict[str, Any]:
        return {"attention": self.attention, "compiled": self.compiled}


# -- attention -------------------------------------------------------------------------------------
def schema_mismatch(schema: str | torch._C.FunctionSchema, args: tuple, kwargs: dict) -> str:
    """Why `op(*args, **kwargs)` would not bind to `schema` ("" if it binds): too many positionals, an unknown
    or doubled keyword, a required argument left out, or a value of the wrong kind for its declared type."""
    if isinstance(schema, str):
        schema = torch._C.parse_schema(schema)
    params = list(schema.arguments)
    positional = [a for a in params if not a.kwarg_only]
    if len(args) > len(positional):
        return f"{len(args)} positional arguments, the op takes {len(positional)}"
    given = dict(zip((a.name for a in positional), args, strict=False))
    for name, value in kwargs.items():
        if name in given:
            return f"{name} given twice"
        if name not in {a.name for a in params}:
            return f"no argument named {name}"
        given[name] = value
    for a in params:
        if a.name not in given:
            if not a.has_default_value():
                return f"required argument {a.name} ({a.type}) not given"
            continue
        if not _fits(str(a.type), given[a.name]):
            return f"{a.name} is {a.type}, got {type(given[a.name]).__name__}"
    return ""


def _fits(kind: str, value: Any) -> bool:
    if kind.startswith("Optional["):
        return value is None or _fits(kind[len("Optional["):-1], value)
    if kind == "Tensor":
        return isinstance(value, Tensor)
    if kind in ("int", "SymInt"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    return True  # a kind our call never passes


def _rel_err(a: Tensor, b: Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def compare_attention(candidate: AttentionFn, reference: AttentionFn, packing: Packing, heads: int, head_dim: int,
                      dtype: torch.dtype, device: torch.device) -> str:
    """Why `candidate` is not `reference` on this packing ("" if it is): random q/k/v and output gradient
    (their own generator: the run's RNG is untouched), forward output and dq/dk/dv, relative L2 error each."""
    g = torch.Generator(device=device).manual_seed(0)
    tokens = packing.token_index.numel()
    q, k, v, grad = (torch.randn(tokens, heads, head_dim, generator=g, device=device).to(dtype) for _ in range(4))
    results = []
    for fn in (candidate, reference):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves, packing, 0.0)
        if out.shape != q.shape:
            return f"the output has shape {tuple(out.shape)}, expected {tuple(q.shape)}"
        out.backward(grad)
        results.append([out.detach(), *(t.grad for t in leaves)])
    tol = REL_TOL[dtype]
    for name, a, b in zip(("output", "dq", "dk", "dv"), *results, strict=True):
        if a is None:
            return f"{name} is missing (no gradient reached it)"
        err = _rel_err(a, b)
        if not err <= tol:  # also catches NaN
            return f"{name} differs from padded SDPA by {err:.3g} (relative L2; {dtype} tolerance {tol:g})"
    return ""


def packing_of(batch: dict[str, Tensor]) -> Packing:
    """The batch's packing as the model builds it; a batch without padding packs every position."""
    ids = batch["input_ids"]
    b, s = ids.shape
    if "token_index" in batch:
        return Packing(batch["token_index"], batch["cu_seqlens"], batch["attention_mask"][:, None, None, :], s)
    full = torch.ones(b, s, dtype=torch.bool, device=ids.device)
    cu = torch.arange(0, b * s + 1, s, dtype=torch.int32, device=ids.device)
    return Packing(torch.arange(b * s, device=ids.device), cu, full[:, None, None, :], s)


def varlen_problem(packing: Packing, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                   candidate: AttentionFn = flash_varlen_attention) -> str:
    """Why the flash varlen kernel cannot be used here ("" if it can): the op is missing, its schema does not
    take our call, it raises, or it disagrees with padded SDPA."""
    op = flash_op()
    if op is None:
        return f"torch {torch.__version__} has no torch.ops.aten._flash_attention_forward"
    placeholder = torch.empty(0)
    why = schema_mismatch(op.default._schema, *flash_call(placeholder, placeholder, placeholder, packing, 0.0))
    if why:
        return f"torch {torch.__version__}'s _flash_attention_forward does not take our call ({why})"
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return compare_attention(candidate, padded_attention, packing, heads, head_dim, dtype, device)
    except Exception as e:  # noqa: BLE001 - any failure of the kernel is a reason to fall back
        return f"the kernel raised {_reason(e)}"


def flash_in_use(model: SpanBert, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the model would call the flash kernel: varlen on CUDA in half precision (else the padded reference)."""
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and model.uses_varlen(device)


def choose_attention(model: SpanBert, batch: dict[str, Tensor], device: torch.device, dtype: torch.dtype,
                     info: Callable[[str], None]) -> str:
    """Check the flash kernel on this real batch where the model would use it; on failure fall back to the
    padded path (model.attention=auto: one warning) or raise SelfCheckError (=varlen). Returns the path used."""
    if not flash_in_use(model, device, dtype):
        return "varlen" if model.uses_varlen(device) else "padded"
    cfg = model.cfg
    why = varlen_problem(packing_of(batch), cfg.num_heads, cfg.head_dim, dtype, device)
    if not why:
        info("model.attention: varlen flash attention matches padded SDPA (forward and backward) on the first batch")
        return "varlen"
    if cfg.attention == "varlen":
        raise SelfCheckError(f"model.attention=varlen: the varlen flash attention path failed its start-up check: {why}; "
                             "--set model.attention=padded (or auto, which falls back) to train without it")
    model.varlen_off = why
    info(f"warning: attention path varlen -> padded: {why}; --set model.attention=padded pins the padded path")
    return "padded"


# -- torch.compile ---------------------------------------------------------------------------------
def first_compiled_step(step: Callable[[nn.Module], T], compiled: nn.Module, eager: nn.Module, setting: bool | str,
                        clear_grads: Callable[[], None], info: Callable[[str], None]) -> tuple[T, nn.Module]:
    """Run the first step compiled (where compilation happens); if it raises, the same step eager with the RNG
    as it was before (train.compile=auto: one warning) or SelfCheckError (=true). Returns (result, the net to
    go on with)."""
    rng = checkpoint.rng_state()
    try:
        return step(compiled), compiled
    except Exception as e:  # noqa: BLE001 - any failure of the compiled step is a reason to fall back
        why = _reason(e)
        if setting is True:
            raise SelfCheckError(f"train.compile=true: the first compiled step failed ({why}); "
                                 "--set train.compile=false (or auto, which falls back to eager)") from e
        clear_grads()
        checkpoint.set_rng_state(rng)
        info(f"warning: train.compile path compiled -> eager: the first compiled step failed ({why}); "
             "--set train.compile=false pins eager")
        return step(eager), eager


def _reason(e: BaseException) -> str:
    """`Type: first line`, through to the root cause (torch.compile wraps the backend's error in its own)."""
    root = e
    while (inner := root.__cause__ or getattr(root, "inner_exception", None)) is not None and inner is not root:
        root = inner
    text = str(root).strip()
    head = f"{type(e).__name__}: " if root is not e else ""
    return f"{head}{type(root).__name__}: {(text.splitlines()[0] if text else '(no message)')[:300]}"
