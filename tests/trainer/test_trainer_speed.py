"""Issue 13, the speed work, each against an independent reference: token-budget steps, a bounded set of
compiled graphs, no_sync under torch.compile (all-reduces counted), the padded vocabulary, unpadded
(varlen) attention equal to the padded path, and a trainer that imports without Beam or spaCy.

Tests marked `gpu` need CUDA (bench/gpu_check.sh runs them on an H100/H200); they are skipped here.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel as DDP

from masking import MaskingConfig
from tests.trainer.conftest import PY, REPO, stream_of
from tests.trainer.shards import write_shards
from trainer.config import DataConfig, ModelConfig, load_config
from trainer.data import BlockStream, build_loader
from trainer.model import IGNORE, SpanBert
from trainer.train import compile_model, global_counts, to_device, train_step

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_check.sh)")
CPU = torch.device("cpu")


def _model_cfg(**kw) -> ModelConfig:
    base = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position=64,
                dropout=0.0, attention_dropout=0.0)
    return ModelConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory):
    # Short documents: blocks of many lengths (16..64 tokens with [CLS]/[SEP]), as real doc-end blocks.
    return write_shards(tmp_path_factory.mktemp("mixed"), num_docs=22, block_size=64, num_shards=2, max_chars=400)


def _stream(shards, **kw) -> BlockStream:
    extra = {k: kw.pop(k) for k in ("world", "rank", "start", "grad_accum") if k in kw}
    return stream_of(shards, DataConfig(num_workers=0, **kw), max_len=64, max_sbo_targets=15, seed=5, **extra)


# -- 1. token-budget steps ---------------------------------------------------------------------------
def test_presets_train_with_the_papers_token_budget():
    for name in ("base", "large"):
        d = load_config(name).data
        assert d.step_tokens == 256 * 512 and d.pad_to_multiple == 64  # paper §4.2: 256 x 512 tokens per step
        assert d.micro_batch_tokens(8, 1) == 32 * 512 and d.micro_batch_tokens(1, 8) == 32 * 512
        assert d.micro_batch_tokens(3, 2) == 131072 // 6


@pytest.mark.parametrize(("world", "accum"), [(1, 1), (2, 1), (3, 2)])
def test_step_token_budget_split_over_ranks_and_accumulation(shard_dir, mixed_shards, world, accum):
    step_tokens, pad = 1536, 16
    s = _stream(shard_dir, step_tokens=step_tokens, pad_to_multiple=pad, world=world, grad_accum=accum)
    lengths = s.shards.lengths + 2  # [CLS] block [SEP], recomputed from the shards, not from the plan
    plan = [s.plan.epoch(e) for e in (0, 1)]
    for batches in plan:  # every block exactly once per epoch
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    micro = step_tokens // (world * accum)
    padded = [len(r) * -(-int(lengths[r].max()) // pad) * pad for r in plan[0]]
    assert max(padded) <= micro  # each micro-batch within its share of the step budget
    steps = [sum(padded[i : i + world * accum]) for i in range(0, len(padded) - world * accum + 1, world * accum)]
    assert max(steps) <= step_tokens and np.median(steps) >= 0.75 * step_tokens  # the step is (nearly) full
    # Length bucketing keeps padding small: beyond rounding each row up to the multiple (which no batching
    # avoids; real pipeline shards have many short document-end blocks), at most 7% more.
    rounded = sum(int((-(-lengths[r] // pad) * pad).sum()) for r in plan[0])
    assert rounded / sum(padded) > 0.93
    with pytest.raises(ValueError, match="smaller than one 64-token sequence"):
        _stream(mixed_shards, step_tokens=200, pad_to_multiple=pad, world=2, grad_accum=2)


def test_token_budget_stream_resumes_exactly(mixed_shards):
    kw = dict(step_tokens=1024, pad_to_multiple=16, bucket_window=2, world=2, grad_accum=2)
    full = list(itertools.islice(build_loader(_stream(mixed_shards, rank=1, **kw), 2, pin_memory=False), 9))
    resumed = list(itertools.islice(build_loader(_stream(mixed_shards, rank=1, start=8, **kw), 1, pin_memory=False), 5))
    for a, b in zip(full[4:], resumed, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- 2. torch.compile: a bounded set of graphs -------------------------------------------------------
class CountingBackend:
    """A torch.compile backend that runs the captured graph as is and counts compilations and calls."""

    def __init__(self) -> None:
        self.compiles, self.calls = 0, 0

    def __call__(self, gm, example_inputs):
        self.compiles += 1

        def run(*args):
            self.calls += 1
            return gm.forward(*args)

        return run


def _epochs(stream: BlockStream, n: int):
    per_epoch = len(stream.plan.epoch(0))
    return itertools.islice(build_loader(stream, 0, pin_memory=False), n * per_epoch)


def test_no_recompilation_after_warm_up_over_epochs_of_real_shards(mixed_shards):
    # Token budget: the row count changes with the width, and the last batch of a width is shorter.
    stream = _stream(mixed_shards, step_tokens=192, pad_to_multiple=16, bucket_window=4)
    shapes = {tuple(stream.collate(0, r)["input_ids"].shape) for r in stream.plan.epoch(0)}
    assert len({w for _, w in shapes}) >= 3 and len(shapes) >= 5, shapes  # several widths and row counts
    torch._dynamo.reset()
    model = SpanBert(_model_cfg())
    backend = CountingBackend()
    net = compile_model(model, backend=backend)
    per_epoch, trace = len(stream.plan.epoch(0)), []
    for batch in _epochs(stream, 3):
        calls = backend.calls
        counts = global_counts([batch], 1, CPU)
        train_step(net, [to_device(batch, CPU, compiled=True)], counts.targets, 1, contextlib.nullcontext())
        model.zero_grad()
        assert backend.calls > calls  # the compiled graph ran (no silent fallback to eager)
        trace.append(backend.compiles)
    print("compilations after each step:", trace)
    # Warm-up: with/without padding x (static first shape, then dynamic), and one 0/1-specialisation
    # recompile torch may add when a size first takes a new small value; then the set is complete.
    warm = trace[2 * per_epoch - 1]
    assert trace[-1] == warm  # epoch 3: no compilation at all
    assert warm <= 4  # bounded: not one graph per shape (dynamic=False compiles 5 times here)
    torch._dynamo.reset()


def test_compiled_losses_equal_eager(shard_dir):
    stream = stream_of(shard_dir, DataConfig(step_tokens=512, pad_to_multiple=16, num_workers=0), max_len=64,
                         max_sbo_targets=15, seed=5)
    batches = [b for b in itertools.islice(build_loader(stream, 0, pin_memory=False), 3)]
    torch._dynamo.reset()
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = SpanBert(_model_cfg())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        net = torch.compile(model, backend="aot_eager") if compiled else model  # AOT-autograd fwd+bwd graphs
        out = []
        for b in batches:
            counts = global_counts([b], 1, CPU)
            sums = train_step(net, [to_device(b, CPU, compiled)], counts.targets, 1, contextlib.nullcontext())
            opt.step()
            opt.zero_grad()
            out.append(float(sums.loss[0] / counts.targets[0] + sums.loss[1] / counts.targets[1]))
        losses[compiled] = out
    assert losses[False][-1] < losses[False][0]  # it trains
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    torch._dynamo.reset()


# -- 3. DDP: one all-reduce pass per optimizer step, compiled or not ------------------------------------
def _ddp_worker(rank: int, world: int, compiled: bool, data: str, out: str, init: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        micro = torch.load(data)[rank]  # this rank's 3 micro-batches
        torch.manual_seed(0)
        model = SpanBert(_model_cfg())
        ddp = DDP(model, gradient_as_bucket_view=True, bucket_cap_mb=1.0)
        calls = [0]

        def counting_hook(state, bucket):
            calls[0] += 1
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(dist.group.WORLD, counting_hook)
        net = compile_model(ddp, backend=CountingBackend()) if compiled else ddp
        step = contextlib.nullcontext()
        for _ in range(2):  # warm-up (DDP rebuilds its buckets after the first pass), then one plain pass
            before = calls[0]
            train_step(net, micro[:1], global_counts(micro[:1], world, CPU).targets, world, step)
            model.zero_grad(set_to_none=True)
        per_pass = calls[0] - before
        before = calls[0]
        counts = global_counts(micro, world, CPU)
        train_step(net, micro, counts.targets, world, step)  # one optimizer step of 3 micro-batches
        if rank == 0:
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            torch.save({"per_pass": per_pass, "accum_calls": calls[0] - before, "grads": grads}, out)
    finally:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.parametrize("compiled", [False, True])
def test_no_sync_under_compile_one_bucket_pass_per_step(shard_dir, tmp_path, compiled):
    stream = stream_of(shard_dir, DataConfig(batch_size=3, num_workers=0), max_len=64, max_sbo_targets=15, seed=3)
    batches = [to_device(b, CPU, False) for b in itertools.islice(build_loader(stream, 0, pin_memory=False), 6)]
    torch.save([batches[0::2], batches[1::2]], tmp_path / "micro.pt")
    mp.start_processes(_ddp_worker, args=(2, compiled, str(tmp_path / "micro.pt"), str(tmp_path / "out.pt"), str(tmp_path / "init")),
                       nprocs=2, join=True, start_method="spawn")
    got = torch.load(tmp_path / "out.pt")
    assert got["per_pass"] >= 1
    assert got["accum_calls"] == got["per_pass"]  # 3 micro-batches, one bucket pass (not 3)
    # The accumulated DDP gradient = one process over all 6 micro-batches (gradient_as_bucket_view included).
    torch.manual_seed(0)
    ref = SpanBert(_model_cfg())
    train_step(ref, batches, global_counts(batches, 1, CPU).targets, 1, contextlib.nullcontext())
    for n, p in ref.named_parameters():
        torch.testing.assert_close(got["grads"][n], p.grad, rtol=0, atol=1e-6, msg=n)


# -- 5. the padded vocabulary --------------------------------------------------------------------------
def test_vocabulary_padded_to_64_never_predicted_and_exported_at_28996_rows(shard_dir):
    torch.manual_seed(0)
    model = SpanBert(_model_cfg()).eval()
    decoder, pad = model.decoder()
    assert decoder.shape == (29056, 32) and pad == 60 and 29056 % 64 == 0
    sd = model.state_dict()
    assert sd["bert.embeddings.word_embeddings.weight"].shape[0] == 28996 and sd["cls.predictions.bias"].shape == (28996,)
    with torch.no_grad():  # every real logit very negative: a padded column at 0 would win every argmax
        model.cls.predictions.bias.fill_(-100.0)
        model.cls.sbo.bias.fill_(-100.0)
    stream = stream_of(shard_dir, DataConfig(batch_size=4, num_workers=0), max_len=64, max_sbo_targets=15, seed=3)
    batch = next(iter(build_loader(stream, 0, pin_memory=False)))
    batch = to_device(batch, CPU, False)
    with torch.no_grad():
        out = model(batch)
        # Reference: the unpadded 28,996-wide decoder, computed by hand.
        hidden = model.bert(batch["input_ids"], batch.get("attention_mask"))
        flat = hidden.reshape(-1, 32)
        idx = (torch.arange(len(hidden))[:, None] * hidden.shape[1] + batch["mlm_positions"]).reshape(-1)
        logits = model.mlm_logits(flat[idx])
        labels = batch["mlm_labels"].reshape(-1)
        expect = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
        correct = ((logits.argmax(-1) == labels) & (labels != IGNORE)).sum()
    torch.testing.assert_close(out["mlm_loss"], expect, rtol=1e-5, atol=1e-4)
    assert int(out["mlm_correct"]) == int(correct)
    assert logits.shape[-1] == 28996


# -- 6. unpadded (varlen) attention = the padded path -------------------------------------------------------
@pytest.mark.parametrize("mode", ["single", "pair"])
def test_varlen_path_equals_padded_path(mixed_shards, mode):
    extra = {"objective": "mlm+nsp"} if mode == "pair" else {}
    data = DataConfig(batch_size=8, num_workers=0, masking=MaskingConfig(scheme="geometric" if mode == "single" else "subword"))
    stream = stream_of(mixed_shards, data, max_len=64, max_sbo_targets=15, seed=3,
                         objective="mlm+nsp" if mode == "pair" else "mlm+sbo")
    batch = next(b for b in build_loader(stream, 0, pin_memory=False) if "attention_mask" in b)
    batch = to_device(batch, CPU, False)
    real = int(batch["attention_mask"].sum())
    assert real < batch["input_ids"].numel()  # the batch carries padding
    results = {}
    for attention in ("padded", "varlen"):
        torch.manual_seed(0)
        model = SpanBert(_model_cfg(attention=attention, num_layers=2, **extra))
        seen = []
        model.bert.encoder.layer[0].register_forward_hook(lambda m, i, o, seen=seen: seen.append(tuple(o.shape)))
        out = model(batch)
        sum(v for k, v in out.items() if k.endswith("_loss")).backward()
        results[attention] = (out, {n: p.grad for n, p in model.named_parameters()}, seen[0])
    (pad_out, pad_grads, pad_shape), (var_out, var_grads, var_shape) = results["padded"], results["varlen"]
    assert pad_shape == (*batch["input_ids"].shape, 32) and var_shape == (real, 32)  # no padding computed
    for k in pad_out:
        torch.testing.assert_close(var_out[k], pad_out[k], rtol=1e-5, atol=1e-5, msg=k)
    for n, g in pad_grads.items():
        torch.testing.assert_close(var_grads[n], g, rtol=1e-4, atol=1e-6, msg=n)


# -- 7. the trainer runs on a stock torch image ------------------------------------------------------------
def test_trainer_and_gpu_bench_import_without_beam_or_spacy():
    code = ("import sys, runpy; import trainer, trainer.train, trainer.data, trainer.model, trainer.hf, trainer.export; "
            "runpy.run_path('bench/gpu_bench.py', run_name='not_main'); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('apache_beam', 'spacy', 'transformers')); "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout + done.stderr


# -- GPU only (bench/gpu_check.sh) -------------------------------------------------------------------------
# No fixtures here: the GPU machine has no ../shared, so these read `make gpu-shards`' 512-token blocks.
def _gpu_batches(n: int, **data) -> list[dict[str, torch.Tensor]]:
    shards = Path(os.environ.get("SPANBERT_GPU_SHARDS", REPO / "build" / "gpu-shards"))
    if not (shards / "manifest.json").is_file():
        pytest.skip(f"{shards}: no shards (make gpu-shards)")
    stream = stream_of(shards, DataConfig(num_workers=0, **{"batch_tokens": 8192, "pad_to_multiple": 64, **data}),
                         max_len=512, max_sbo_targets=15, seed=3)
    batches = [b for b in itertools.islice(build_loader(stream, 0, pin_memory=False), 4 * n) if "attention_mask" in b]
    return [to_device(b, torch.device("cuda"), False) for b in batches[:n]]


def _gpu_cfg(**kw) -> ModelConfig:
    return _model_cfg(hidden_size=256, num_layers=2, num_heads=4, intermediate_size=1024, max_position=512, **kw)


@gpu
@needs_cuda
def test_cuda_varlen_flash_equals_padded_sdpa_bf16():
    batch = _gpu_batches(1)[0]
    out = {}
    for attention in ("padded", "varlen"):
        torch.manual_seed(0)
        model = SpanBert(_gpu_cfg(attention=attention)).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            o = model(batch)
        loss = o["mlm_loss"] / len(batch["input_ids"]) + o["sbo_loss"] / len(batch["input_ids"])
        loss.backward()
        out[attention] = (loss.detach().float(), model.bert.encoder.layer[0].attention.self.query.weight.grad.float())
    torch.testing.assert_close(out["varlen"][0], out["padded"][0], rtol=1e-2, atol=1e-2)
    g_var, g_pad = out["varlen"][1], out["padded"][1]
    assert (g_var - g_pad).norm() / g_pad.norm() < 0.05  # bf16 rounding differs between the two kernels


@gpu
@needs_cuda
def test_cuda_compiled_bf16_losses_equal_eager():
    batches = _gpu_batches(3)
    losses = {}
    torch._dynamo.reset()
    for compiled in (False, True):
        torch.manual_seed(0)
        model = SpanBert(_gpu_cfg()).cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        net = compile_model(model) if compiled else model  # inductor
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
        out = []
        for b in batches:
            counts = global_counts([b], 1, b["input_ids"].device)
            sums = train_step(net, [b], counts.targets, 1, autocast)
            opt.step()
            opt.zero_grad()
            out.append(float(sums.loss[0] / counts.targets[0] + sums.loss[1] / counts.targets[1]))
        losses[compiled] = out
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-2)
    torch._dynamo.reset()


@gpu
@needs_cuda
def test_cuda_fused_adamw_skips_a_nonfinite_step_on_device():
    from trainer.train import _optimizer_step

    p = torch.nn.Parameter(torch.ones(1000, device="cuda"))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    p.grad = torch.ones_like(p)
    _optimizer_step(opt, torch.tensor(1.0, device="cuda"))
    before = (p.detach().clone(), opt.state[p]["exp_avg"].clone(), float(opt.state[p]["step"]))
    p.grad = torch.full_like(p, float("nan"))
    skipped = _optimizer_step(opt, torch.tensor(float("nan"), device="cuda"))
    assert float(skipped) == 1.0 and float(opt.state[p]["step"]) == before[2]
    assert torch.equal(p.detach(), before[0]) and torch.equal(opt.state[p]["exp_avg"], before[1])
