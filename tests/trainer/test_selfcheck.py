"""The start-up self-checks (trainer/selfcheck.py), on CPU: the attention comparison against an independent
per-sequence attention and planted faults, the op missing / with another signature / raising, our call
against the op's schema in torch 2.11 and 2.13, and the compile fall-back (a failing compiler backend)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.trainer.conftest import tiny_config
from trainer import model as model_mod
from trainer import selfcheck, train
from trainer.model import Packing, SpanBert, flash_call, padded_attention
from trainer.selfcheck import SelfCheckError, compare_attention, schema_mismatch
from trainer.train import run

SCHEMAS = Path(__file__).resolve().parents[1] / "fixtures" / "torch-schemas"
HEADS, HEAD_DIM = 2, 8


def _packing(lengths: list[int], width: int) -> Packing:
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return Packing(mask.reshape(-1).nonzero().squeeze(1), cu, mask[:, None, None, :], width)


def per_sequence_attention(q, k, v, p: Packing, dropout_p: float):
    """The independent reference: softmax(q k^T / sqrt(d)) v, one sequence at a time, written out."""
    out = []
    cu = p.cu_seqlens.tolist()
    for a, b in zip(cu[:-1], cu[1:], strict=True):
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))  # [heads, n, d]
        w = torch.softmax(qs @ ks.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        out.append((w @ vs).transpose(0, 1))
    return torch.cat(out)


def across_sequences(q, k, v, p: Packing, dropout_p: float):
    """A planted fault: the packed tokens attend to each other across sequence boundaries."""
    y = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None])
    return y[0].transpose(0, 1)


class _WrongGrad(torch.autograd.Function):
    """The right forward, a gradient scaled by 1.5: only the backward comparison can see it."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return 1.5 * g


def wrong_backward(q, k, v, p: Packing, dropout_p: float):
    return padded_attention(_WrongGrad.apply(q), k, v, p, dropout_p)


PACKING = _packing([5, 16, 1, 9], 16)  # ragged, one full row, one single token


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padded_sdpa_agrees_with_an_independent_per_sequence_attention(dtype):
    assert compare_attention(per_sequence_attention, padded_attention, PACKING, HEADS, HEAD_DIM, dtype, torch.device("cpu")) == ""


@pytest.mark.parametrize(("candidate", "words"), [(across_sequences, "output differs"), (wrong_backward, "dq differs")])
def test_a_wrong_kernel_is_caught_forward_and_backward(candidate, words):
    why = compare_attention(candidate, padded_attention, PACKING, HEADS, HEAD_DIM, torch.bfloat16, torch.device("cpu"))
    assert words in why and "padded SDPA" in why


def test_the_comparison_leaves_the_run_rng_alone():
    before = torch.get_rng_state()
    compare_attention(per_sequence_attention, padded_attention, PACKING, HEADS, HEAD_DIM, torch.float32, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before)


# -- the op's schema ------------------------------------------------------------------------------
def _call_args():
    t = torch.empty(0)
    return flash_call(t, t, t, PACKING, 0.1)


@pytest.mark.parametrize("version", ["2.11.0", "2.13.0"])
def test_our_call_binds_to_the_op_schema_of_torch(version):
    schema = (SCHEMAS / f"flash_attention_forward-{version}.txt").read_text().strip()
    parsed = torch._C.parse_schema(schema)
    assert [r.name for r in parsed.returns][0] == "output"  # we take output 0
    assert schema_mismatch(schema, *_call_args()) == ""


def test_the_committed_2_13_schema_is_the_installed_torchs():
    if not torch.__version__.startswith("2.13."):
        pytest.skip(f"torch {torch.__version__}")
    live = str(torch.ops.aten._flash_attention_forward.default._schema)
    assert live == (SCHEMAS / "flash_attention_forward-2.13.0.txt").read_text().strip()


def test_the_schema_binder_refuses_calls_that_would_not_bind():
    schema = (SCHEMAS / "flash_attention_forward-2.11.0.txt").read_text().strip()
    args, _ = _call_args()
    assert "positional" in schema_mismatch(schema, (*args, 1.0), {})  # scale is keyword-only
    assert "dropout_p is float, got bool" in schema_mismatch(schema, (*args[:7], False, 0.1, False), {})
    assert "return_debug_mask" in schema_mismatch(schema, args[:9], {})  # a required one left out
    assert "no argument named num_splits" in schema_mismatch(schema, args, {"num_splits": 1})  # 2.13 only
    assert schema_mismatch(schema, args, {"scale": 0.5}) == ""


# -- the fall-back decision -----------------------------------------------------------------------
def _model(attention: str) -> SpanBert:
    return SpanBert(tiny_config(model={"attention": attention}).model)


def _batch() -> dict[str, torch.Tensor]:
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    return {"input_ids": torch.zeros(2, 8, dtype=torch.long), "attention_mask": mask,
            "token_index": mask.reshape(-1).nonzero().squeeze(1),
            "cu_seqlens": torch.tensor([0, 8, 13], dtype=torch.int32)}


class _FakeOp:
    def __init__(self, schema: str):
        self.default = type("Overload", (), {"_schema": torch._C.parse_schema(schema)})()

    def __call__(self, q, *args, **kwargs):
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.\nmore detail")


NEW_REQUIRED = ("aten::_flash_attention_forward(Tensor query, Tensor key, Tensor value, Tensor? cum_seq_q, Tensor? "
                "cum_seq_k, SymInt max_q, SymInt max_k, Tensor seqused_q, float dropout_p, bool is_causal, bool "
                "return_debug_mask) -> (Tensor output, Tensor softmax_logsumexp)")


@pytest.mark.parametrize(("op", "words"), [
    (None, "has no torch.ops.aten._flash_attention_forward"),
    (_FakeOp(NEW_REQUIRED), "does not take our call"),
    (_FakeOp((SCHEMAS / "flash_attention_forward-2.11.0.txt").read_text().strip()), "raised RuntimeError: FlashAttention only"),
])
def test_auto_falls_back_to_padded_with_one_warning_and_varlen_makes_it_an_error(monkeypatch, op, words):
    monkeypatch.setattr(model_mod, "flash_op", lambda: op)
    monkeypatch.setattr(selfcheck, "flash_op", lambda: op)
    monkeypatch.setattr(selfcheck, "flash_in_use", lambda *a: True)  # as on CUDA in bf16
    lines: list[str] = []
    m = _model("auto")
    assert selfcheck.choose_attention(m, _batch(), torch.device("cpu"), torch.bfloat16, lines.append) == "padded"
    assert len(lines) == 1 and lines[0].startswith("warning: attention path varlen -> padded: ") and words in lines[0]
    assert "--set model.attention=padded" in lines[0] and "\n" not in lines[0]
    assert not m.uses_varlen(torch.device("cuda"))  # the model now takes the padded path
    with pytest.raises(SelfCheckError, match=f"model.attention=varlen: .*{words}.*--set model.attention=padded"):
        selfcheck.choose_attention(_model("varlen"), _batch(), torch.device("cpu"), torch.bfloat16, lines.append)


def test_a_working_kernel_keeps_varlen(monkeypatch):
    monkeypatch.setattr(selfcheck, "flash_in_use", lambda *a: True)
    real = selfcheck.varlen_problem
    monkeypatch.setattr(selfcheck, "varlen_problem", lambda *a: real(*a, candidate=per_sequence_attention))
    lines: list[str] = []
    m = _model("auto")
    assert selfcheck.choose_attention(m, _batch(), torch.device("cpu"), torch.float32, lines.append) == "varlen"
    assert m.uses_varlen(torch.device("cuda")) and not any(x.startswith("warning") for x in lines)


# -- torch.compile ----------------------------------------------------------------------------------
def _failing_backend(gm, example_inputs):
    raise RuntimeError("inductor: no C++ compiler found")


@pytest.mark.slow  # dynamo traces the module before the backend fails: ~3-8 s
def test_a_failing_compiler_falls_back_to_the_exact_eager_step_or_errors_when_explicit():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
    x = torch.randn(3, 4)

    def step(module):  # draws random numbers before the module runs: a failure part-way through a step
        loss = module(F.dropout(x, 0.5)).sum()
        loss.backward()
        return loss.detach()

    torch.manual_seed(1)
    expected = step(net)
    expected_grad = net[0].weight.grad.clone()
    net.zero_grad(set_to_none=True)

    torch.manual_seed(1)
    torch._dynamo.reset()
    compiled = torch.compile(net, backend=_failing_backend)
    lines: list[str] = []
    result, used = selfcheck.first_compiled_step(step, compiled, net, "auto", lambda: net.zero_grad(set_to_none=True), lines.append)
    assert used is net and torch.equal(result, expected) and torch.equal(net[0].weight.grad, expected_grad)
    assert len(lines) == 1 and "train.compile path compiled -> eager" in lines[0] and "no C++ compiler" in lines[0]
    assert "--set train.compile=false" in lines[0]
    with pytest.raises(SelfCheckError, match="train.compile=true: the first compiled step failed .*no C\\+\\+ compiler"):
        selfcheck.first_compiled_step(step, torch.compile(net, backend=_failing_backend), net, True, lambda: None, lines.append)


@pytest.mark.slow
def test_the_run_records_the_paths_used_and_falls_back_in_the_loop(shard_dir, tmp_path, monkeypatch, capsys):
    """Through train.run: compile on (as on CUDA) with a compiler that fails -> eager, same losses as an eager
    run; the attention check forced on with the op missing -> padded. Both in the log and the metrics."""
    cfg = tiny_config(train={"max_steps": 3, "log_every": 1, "ckpt_every": 100})
    run(cfg, shard_dir, tmp_path / "eager")
    monkeypatch.setattr(train, "use_compile", lambda setting, device: True)
    monkeypatch.setattr(train, "compile_model", lambda net: torch.compile(net, backend=_failing_backend))
    monkeypatch.setattr(selfcheck, "flash_in_use", lambda *a: True)
    monkeypatch.setattr(selfcheck, "flash_op", lambda: None)
    torch._dynamo.reset()
    capsys.readouterr()
    run(cfg, shard_dir, tmp_path / "fallback")
    err = capsys.readouterr().err
    assert err.count("warning: ") == 2 and "paths used: attention padded, eager" in err

    def lines(d):
        return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]

    eager, fallback = lines(tmp_path / "eager"), lines(tmp_path / "fallback")
    assert [m["loss"] for m in fallback] == [m["loss"] for m in eager]
    assert all(m["attention"] == "padded" and m["compiled"] is False for m in fallback)
    explicit = tiny_config(train={"max_steps": 3, "compile": True})
    torch._dynamo.reset()
    with pytest.raises(SelfCheckError, match="train.compile=true"):
        run(explicit, shard_dir, tmp_path / "explicit")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_check.sh)")
def test_cuda_flash_kernel_passes_the_self_check_and_a_planted_fault_does_not():
    """On the GPU machine (bench/gpu_check.sh): this torch's flash op, at BERT-base's head shape in bf16, on
    ragged sequences up to 512; the same check with the cross-sequence fault must fail."""
    cuda = torch.device("cuda")
    p = _packing([100, 512, 37, 300], 512)
    p = Packing(p.token_index.to(cuda), p.cu_seqlens.to(cuda), p.mask.to(cuda), p.seq_len)
    assert selfcheck.varlen_problem(p, 12, 64, torch.bfloat16, cuda) == ""
    assert "output differs" in selfcheck.varlen_problem(p, 12, 64, torch.bfloat16, cuda, candidate=across_sequences)
