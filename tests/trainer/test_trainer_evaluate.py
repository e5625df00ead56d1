"""Held-out evaluation and the training loss normalisation against an independent computation.

The reference is computed here from the model's own logits at the fixed masked positions, one row
at a time (no padding), with `torch.nn.functional.cross_entropy` over all targets at once — not
from `SpanBert.forward`'s summed losses or the evaluator's running sums.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from tests.trainer.conftest import stream_of, tiny_config
from trainer import ablate, checkpoint
from trainer.config import Config
from trainer.data import BlockStream
from trainer.evaluate import EVAL_SEED, evaluate, evaluate_checkpoint
from trainer.metrics import ObjectiveSums
from trainer.model import IGNORE, SpanBert
from trainer.train import global_counts, target_counts, train_step

CPU = torch.device("cpu")
SINGLE_SBO = {"model": {"objective": "mlm+sbo"}, "data": {}}
PAIR_NSP = {"model": {"objective": "mlm+nsp"}, "data": {"masking": {"scheme": "subword"}}}


def _config(objectives: dict, **model) -> Config:
    return tiny_config(model={**objectives["model"], **model}, data={**objectives["data"], "holdout_fraction": 0.3})


def _stream(shard_dir, cfg: Config, seed: int = EVAL_SEED) -> BlockStream:
    return stream_of(shard_dir, cfg.data, max_len=cfg.model.max_position, max_sbo_targets=cfg.model.max_sbo_targets,
                       seed=seed, objective=cfg.model.objective)


def _model(cfg: Config, stream: BlockStream) -> SpanBert:
    """A model with informative logits: decoder biases favour frequent tokens (non-zero accuracy), plus noise."""
    torch.manual_seed(0)
    model = SpanBert(cfg.model)
    prior = torch.log1p(torch.as_tensor(stream.shards.manifest.unigram_counts(), dtype=torch.float32))
    with torch.no_grad():
        model.cls.predictions.bias.copy_(prior + 0.5 * torch.randn(cfg.model.vocab_size))
        if model.cls.sbo is not None:
            model.cls.sbo.bias.copy_(prior + 0.5 * torch.randn(cfg.model.vocab_size))
    return model.eval()


@torch.no_grad()
def reference(model: SpanBert, stream: BlockStream, rows: np.ndarray) -> dict[str, float]:
    """Cross-entropy and accuracy per objective over all targets of `rows` at once."""
    model.eval()
    decoder = model.bert.embeddings.word_embeddings.weight
    logits: dict[str, list[torch.Tensor]] = {"mlm": [], "sbo": [], "nsp": []}
    labels: dict[str, list[torch.Tensor]] = {"mlm": [], "sbo": [], "nsp": []}
    for r in rows:
        b = stream.collate(0, np.array([r]))  # one row: no padding at all
        hidden = model.bert(b["input_ids"], b.get("attention_mask"), b.get("token_type_ids"))[0]
        keep = b["mlm_labels"][0] != IGNORE
        logits["mlm"].append(model.mlm_logits(hidden[b["mlm_positions"][0][keep]]))
        labels["mlm"].append(b["mlm_labels"][0][keep])
        if "sbo_labels" in b:
            keep = b["sbo_labels"][0] != IGNORE
            y = model.cls.sbo(hidden[b["sbo_left"][0][keep]], hidden[b["sbo_right"][0][keep]], b["sbo_rel"][0][keep].clone())
            logits["sbo"].append(F.linear(y, decoder, model.cls.sbo.bias))
            labels["sbo"].append(b["sbo_labels"][0][keep])
        if "nsp_labels" in b:
            logits["nsp"].append(model.cls.seq_relationship(model.bert.pooler(hidden[None])))
            labels["nsp"].append(b["nsp_labels"])
    out = {}
    for name in logits:
        if logits[name]:
            x, y = torch.cat(logits[name]), torch.cat(labels[name])
            out[f"{name}_loss"] = F.cross_entropy(x, y).item()
            out[f"{name}_acc"] = (x.argmax(-1) == y).double().mean().item()
            out[f"{name}_targets"] = len(y)
    return out


def assert_matches(got: dict, want: dict) -> None:
    assert {k for k in got if k.split("_")[0] in ("mlm", "sbo", "nsp")} == set(want)
    for key, value in want.items():
        if key.endswith("_targets"):
            assert got[key] == value, key
        else:
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("objectives", [SINGLE_SBO, PAIR_NSP], ids=["1seq-sbo", "2seq-nsp"])
def test_evaluate_equals_cross_entropy_over_all_targets(shard_dir, objectives):
    cfg = _config(objectives)
    stream = _stream(shard_dir, cfg)
    model = _model(cfg, stream)
    rows = stream.heldout_rows[:20]
    want = reference(model, stream, rows)
    # Batches of uneven size and length (padding, several batches): still one average over targets.
    got = evaluate(model, stream, rows, batch_size=6, device=CPU)
    assert_matches(got, want)
    assert want["mlm_targets"] > 3 * len(rows)  # several targets per block: per-block averaging would differ
    assert 0.01 < want["mlm_acc"] < 0.9 and abs(want["mlm_loss"] - math.log(cfg.model.vocab_size)) > 0.5


@pytest.mark.parametrize("objectives", [SINGLE_SBO, PAIR_NSP], ids=["1seq-sbo", "2seq-nsp"])
def test_untrained_model_scores_the_uniform_baseline(shard_dir, objectives):
    """With a near-zero init every logit is ~0: MLM and SBO lose ln(vocab size), NSP ln 2."""
    cfg = _config(objectives, init_std=1e-4)
    stream = _stream(shard_dir, cfg)
    torch.manual_seed(0)
    got = evaluate(SpanBert(cfg.model), stream, stream.heldout_rows[:12], batch_size=5, device=CPU)
    assert got["mlm_loss"] == pytest.approx(math.log(28996), abs=2e-3)
    if cfg.model.objective.sbo:
        assert got["sbo_loss"] == pytest.approx(math.log(28996), abs=2e-3)
    else:
        assert got["nsp_loss"] == pytest.approx(math.log(2), abs=2e-3)


def test_checkpoint_evaluation_and_the_ablation_table_use_the_same_numbers(shard_dir, tmp_path, monkeypatch):
    """`trainer.ablate` scores each row through `evaluate_checkpoint`: its table holds the reference values."""
    row = next(r for r in ablate.ROWS if r.name == "geometric-1seq-sbo")
    cfg = _config(SINGLE_SBO)
    stream = _stream(shard_dir, cfg)
    model = _model(cfg, stream)

    def fake_train(r, args, run_dir):  # a "trained" row: our model as its step-7 checkpoint
        assert r == row
        checkpoint.save(run_dir, 7, {"model": model.state_dict(), "config": cfg.to_dict(),
                                     "vocab_sha256": stream.vocab.sha256}, keep_last=1)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 7, "loss": 20.0, "mlm_loss": 10.0}) + "\n")

    monkeypatch.setattr(ablate, "train_row", fake_train)
    want = reference(model, stream, stream.heldout_rows)  # the run's held-out rows, the evaluation seed's masks

    fake_train(row, None, tmp_path / "direct")
    direct = evaluate_checkpoint(tmp_path / "direct", shard_dir)
    assert direct["step"] == 7 and direct["blocks"] == len(stream.heldout_rows)
    assert_matches(direct, want)

    ablate.main(["--data", str(shard_dir), "--out", str(tmp_path / "grid"), "--rows", row.name,
                 "--holdout-fraction", "0.3", "--set", "model.max_position=64"])
    (result,) = json.loads((tmp_path / "grid" / "results.json").read_text())
    for prefix in ("own", "geo"):  # geometric single-sequence: the row's own task is the yardstick
        assert_matches({k.removeprefix(f"{prefix}_"): v for k, v in result.items() if k.startswith(prefix)}, want)
    table = (tmp_path / "grid" / "results.md").read_text()
    assert f"{want['mlm_loss']:.4f}" in table and f"{want['sbo_loss']:.4f}" in table


def test_train_step_gradient_is_that_of_the_mean_losses(shard_dir):
    """Training loss = mean MLM CE + mean SBO CE over the global targets: the gradient train_step leaves
    equals the autograd gradient of that loss computed independently, however the batch is split."""
    cfg = _config(SINGLE_SBO, dropout=0.0, attention_dropout=0.0)
    cfg.data.masking = replace(cfg.data.masking, sbo_edge_spans=False)  # edge spans get MLM only: fewer SBO than MLM targets, so mixing them up shows
    stream = _stream(shard_dir, cfg, seed=3)
    rows = stream.train_rows[:6]
    model = _model(cfg, stream).train()
    halves = [stream.collate(0, rows[:2]), stream.collate(0, rows[2:])]
    counts = global_counts(halves, 1, CPU)
    sums = train_step(model, halves, counts.targets, 1, contextlib.nullcontext())
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad(set_to_none=True)
    ref = model_ref_loss(model, stream, rows)
    ref["loss"].backward()
    for n, g in got.items():
        torch.testing.assert_close(g, model.get_parameter(n).grad, rtol=1e-4, atol=1e-7, msg=n)
    # The returned sums are summed (not averaged) losses and correct counts; the counts are the target numbers.
    assert counts.targets[:2].tolist() == [ref["mlm_targets"], ref["sbo_targets"]] and counts.targets[2] == 0
    assert ref["sbo_targets"] < ref["mlm_targets"]
    assert sums.loss[0].item() == pytest.approx(ref["mlm_loss"].item() * ref["mlm_targets"], rel=1e-5)
    assert sums.loss[1].item() == pytest.approx(ref["sbo_loss"].item() * ref["sbo_targets"], rel=1e-5)
    assert sums.correct[0].item() == ref["mlm_correct"] and sums.correct[1].item() == ref["sbo_correct"]


def model_ref_loss(model: SpanBert, stream: BlockStream, rows: np.ndarray) -> dict:
    decoder = model.bert.embeddings.word_embeddings.weight
    parts = {"mlm": ([], []), "sbo": ([], [])}
    for r in rows:
        b = stream.collate(0, np.array([r]))
        hidden = model.bert(b["input_ids"], b.get("attention_mask"))[0]
        keep = b["mlm_labels"][0] != IGNORE
        parts["mlm"][0].append(model.mlm_logits(hidden[b["mlm_positions"][0][keep]]))
        parts["mlm"][1].append(b["mlm_labels"][0][keep])
        keep = b["sbo_labels"][0] != IGNORE
        y = model.cls.sbo(hidden[b["sbo_left"][0][keep]], hidden[b["sbo_right"][0][keep]], b["sbo_rel"][0][keep].clone())
        parts["sbo"][0].append(F.linear(y, decoder, model.cls.sbo.bias))
        parts["sbo"][1].append(b["sbo_labels"][0][keep])
    out: dict = {"loss": 0.0}
    for name, (xs, ys) in parts.items():
        x, y = torch.cat(xs), torch.cat(ys)
        out[f"{name}_loss"] = F.cross_entropy(x, y)
        out["loss"] = out["loss"] + out[f"{name}_loss"]
        out[f"{name}_targets"] = float(len(y))
        out[f"{name}_correct"] = float((x.argmax(-1) == y).sum())
    return out


@pytest.mark.parametrize("objectives", [SINGLE_SBO, PAIR_NSP, {"model": {"objective": "mlm"}, "data": {}}],
                         ids=["1seq-sbo", "2seq-nsp", "1seq"])
def test_global_counts_are_the_target_counts(shard_dir, objectives):
    """[N_mlm, N_sbo, N_nsp, flag] over micro-batches: labels that are not IGNORE, pairs; 0 for an absent head."""
    cfg = _config(objectives)
    stream = _stream(shard_dir, cfg, seed=3)
    micro = [stream.collate(0, stream.train_rows[:3]), stream.collate(0, stream.train_rows[3:5])]
    want = [sum(int((b[f"{o}_labels"] != IGNORE).sum()) if f"{o}_labels" in b else 0 for b in micro)
            for o in ("mlm", "sbo", "nsp")]
    assert global_counts(micro, 1, CPU, flag=2.0).pack().tolist() == [*want, 2.0]
    assert global_counts(micro, 1, CPU).pack().tolist() == [*want, 0.0]  # no stop flag unless one is raised
    assert global_counts(micro, 1, CPU).targets.dtype == torch.float64  # exact counts past 2**24 targets
    assert want[0] > 0 and (want[1] > 0) == cfg.model.objective.sbo and want[2] == (5 if cfg.model.objective.nsp else 0)


class _Linear(torch.nn.Module):
    """A stand-in model whose summed losses are w * constant: d loss / d w is then known by hand."""

    def __init__(self, losses: dict[str, float], correct: float = 1.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.losses, self.correct = losses, correct

    def forward(self, batch):
        out = {}
        for name, value in self.losses.items():
            out[f"{name}_loss"] = self.w * value * batch["scale"]
            out[f"{name}_correct"] = torch.tensor(self.correct)
        return out


def _slots(sums: ObjectiveSums) -> torch.Tensor:
    """[mlm_loss, mlm_correct, sbo_loss, sbo_correct, nsp_loss, nsp_correct] of a step's sums."""
    return torch.stack([sums.loss, sums.correct], 1).reshape(-1)


def test_train_step_divides_each_summed_loss_by_its_global_count():
    """Hand-worked: two micro-batches (scale 1 and 3), summed losses mlm 2w·s, nsp 5w·s, global counts
    N_mlm = 4, N_nsp = 1 (a count of one must not be rounded up), world 2 (DDP averages, so x2)."""
    model = _Linear({"mlm": 2.0, "nsp": 5.0})
    counts = torch.tensor([4.0, 0.0, 1.0], dtype=torch.float64)
    micro = [{"scale": torch.tensor(1.0)}, {"scale": torch.tensor(3.0)}]
    sums = train_step(model, micro, counts, 2, contextlib.nullcontext())
    assert model.w.grad.item() == pytest.approx(2 * (2 * 4 / 4 + 5 * 4 / 1))
    assert sums.loss.dtype == torch.float64 and _slots(sums).tolist() == [8.0, 2.0, 0.0, 0.0, 20.0, 2.0]


def test_checkpoint_of_a_pair_run_is_scored_as_pairs_and_checked_against_the_shards(shard_dir, tmp_path):
    cfg = _config(PAIR_NSP)
    stream = _stream(shard_dir, cfg)
    model = _model(cfg, stream)
    state = {"model": model.state_dict(), "config": cfg.to_dict(), "vocab_sha256": stream.vocab.sha256}
    checkpoint.save(tmp_path / "pair", 3, state, keep_last=1)
    got = evaluate_checkpoint(tmp_path / "pair", shard_dir, max_blocks=10)
    assert got["objective"] == "mlm+nsp" and got["blocks"] == 10
    assert_matches(got, reference(model, stream, stream.heldout_rows[:10]))
    # --single-sequence / --scheme: the same model scored on single sequences with other masks (no NSP).
    other = stream_of(shard_dir, replace(cfg.data, masking=replace(cfg.data.masking, scheme="whole_word")), max_len=cfg.model.max_position,
                        max_sbo_targets=cfg.model.max_sbo_targets, seed=EVAL_SEED, objective="mlm")
    got = evaluate_checkpoint(tmp_path / "pair", shard_dir, scheme="whole_word", single_sequence=True, max_blocks=10)
    assert got["objective"] == "mlm" and got["scheme"] == "whole_word"
    assert_matches(got, reference(model, other, stream.heldout_rows[:10]))
    # A checkpoint trained on another vocabulary is refused, not scored.
    checkpoint.save(tmp_path / "other", 3, {**state, "vocab_sha256": "0" * 64}, keep_last=1)
    with pytest.raises(ValueError, match="0000"):
        evaluate_checkpoint(tmp_path / "other", shard_dir)


def test_checkpoint_rows_all_or_another_holdout_and_the_empty_holdout_error(shard_dir, tmp_path):
    cfg = _config(SINGLE_SBO)
    stream = _stream(shard_dir, cfg)
    model = _model(cfg, stream)
    checkpoint.save(tmp_path / "run", 1, {"model": model.state_dict(), "config": cfg.to_dict(),
                                          "vocab_sha256": stream.vocab.sha256}, keep_last=1)
    got = evaluate_checkpoint(tmp_path / "run", shard_dir, split="all", max_blocks=5)
    assert got["blocks"] == 5 and got["split"] == "all"
    assert_matches(got, reference(model, stream, np.arange(5)))  # every row, from the first
    half = stream_of(shard_dir, replace(cfg.data, holdout_fraction=0.5), max_len=cfg.model.max_position,
                       max_sbo_targets=cfg.model.max_sbo_targets, seed=EVAL_SEED, objective="mlm+sbo")
    assert len(half.heldout_rows) != len(stream.heldout_rows)
    got = evaluate_checkpoint(tmp_path / "run", shard_dir, holdout_fraction=0.5)
    assert got["blocks"] == len(half.heldout_rows)
    with pytest.raises(ValueError, match="held out no documents"):
        evaluate_checkpoint(tmp_path / "run", shard_dir, holdout_fraction=0.0)


def test_checkpoint_result_names_its_file_seed_and_the_way_out_of_an_empty_holdout(shard_dir, tmp_path):
    """The provenance keys of the result (which checkpoint file, which mask seed), and an error that says
    what to do (docs/trainer.md: --split all or --holdout-fraction)."""
    cfg = _config(SINGLE_SBO)
    stream = _stream(shard_dir, cfg)
    model = _model(cfg, stream)
    checkpoint.save(tmp_path / "run", 4, {"model": model.state_dict(), "config": cfg.to_dict(),
                                          "vocab_sha256": stream.vocab.sha256}, keep_last=1)
    (path,) = (tmp_path / "run").rglob("step-*.pt")
    got = evaluate_checkpoint(tmp_path / "run", shard_dir, max_blocks=3)
    assert got["checkpoint"] == str(path) and got["step"] == 4 and got["mask_seed"] == EVAL_SEED
    other = evaluate_checkpoint(path, shard_dir, max_blocks=3, seed=5)  # the file itself, another mask seed
    assert other["checkpoint"] == str(path) and other["mask_seed"] == 5
    assert_matches(other, reference(model, _stream(shard_dir, cfg, seed=5), stream.heldout_rows[:3]))
    with pytest.raises(ValueError, match=r"\); evaluate --split all, or give a holdout fraction to score a fixed set of documents$"):
        evaluate_checkpoint(tmp_path / "run", shard_dir, holdout_fraction=0.0)


# -- when DDP synchronises, counts and sums by hand (stand-in models: no data, no processes) -------
# The tests above check the gradient against autograd on real batches, test_trainer_ddp.py against 2
# gloo ranks; what neither can see is *when* DDP synchronises: with one micro-batch per rank
# there is no `no_sync` to get wrong, and syncing on every micro-batch gives the same gradient (only more
# communication). Here a DDP stand-in (an instance of DDP, so `train_step` treats it as one) records, at
# each backward, whether gradient synchronisation was off.


class _RecordingDDP(DDP):
    """DDP without a process group: `no_sync` only flips a flag, and each backward logs whether it was on."""

    def __init__(self, module: torch.nn.Module):
        torch.nn.Module.__init__(self)  # not DDP.__init__: no process group here
        self.module = module
        self.syncing = True
        self.synced_backwards: list[bool] = []

    @contextlib.contextmanager
    def no_sync(self):
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True

    def forward(self, batch):
        out = self.module(batch)
        loss = next(v for k, v in out.items() if k.endswith("_loss"))
        loss.register_hook(lambda g: self.synced_backwards.append(self.syncing) or g)  # runs inside backward
        return out


class _Compiled(torch.nn.Module):
    """What torch.compile returns: a wrapper whose `_orig_mod` is the module it compiled (here the DDP)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self._orig_mod = inner

    def forward(self, batch):
        return self._orig_mod(batch)


def _micro(*scales: float) -> list[dict[str, torch.Tensor]]:
    return [{"scale": torch.tensor(s)} for s in scales]


COUNTS = torch.tensor([4.0, 0.0, 1.0], dtype=torch.float64)


@pytest.mark.parametrize("wrap", ["ddp", "compiled-ddp"])
def test_ddp_synchronises_on_the_last_micro_batch_only(wrap):
    """Three micro-batches: the first two backwards run under no_sync, the last one all-reduces."""
    ddp = _RecordingDDP(_Linear({"mlm": 2.0, "nsp": 5.0}))
    model = ddp if wrap == "ddp" else _Compiled(ddp)
    sums = train_step(model, _micro(1.0, 3.0, 0.5), COUNTS, 2, contextlib.nullcontext())
    assert ddp.synced_backwards == [False, False, True]
    # The gradient is that of sum_k (summed loss_k / N_k) * world over the micro-batches (scales 1 + 3 + 0.5).
    assert ddp.module.w.grad.item() == pytest.approx(2 * 4.5 * (2 / 4 + 5 / 1))
    assert _slots(sums).tolist() == [2 * 4.5, 3.0, 0.0, 0.0, 5 * 4.5, 3.0]


def test_one_micro_batch_synchronises():
    ddp = _RecordingDDP(_Linear({"mlm": 2.0}))
    train_step(ddp, _micro(1.0), torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64), 1, contextlib.nullcontext())
    assert ddp.synced_backwards == [True]
    assert ddp.module.w.grad.item() == pytest.approx(2.0 / 2.0)


def test_an_objective_without_targets_adds_nothing_and_divides_by_one():
    """N_sbo = 0: an SBO loss that is present (0 here, no targets) is divided by 1, never by 0 (NaN)."""
    model = _Linear({"mlm": 3.0, "sbo": 0.0})
    counts = torch.tensor([6.0, 0.0, 0.0], dtype=torch.float64)
    sums = train_step(model, _micro(1.0, 1.0), counts, 1, contextlib.nullcontext())
    assert model.w.grad.item() == pytest.approx(2 * 3.0 / 6.0)
    assert _slots(sums).tolist() == [6.0, 2.0, 0.0, 2.0, 0.0, 0.0]


def test_sums_accumulate_losses_and_correct_counts_separately():
    """Each objective's summed loss lands in slot 2k and its correct count in 2k + 1, over all micro-batches."""
    model = _Linear({"mlm": 1.5, "sbo": 2.5, "nsp": 4.0}, correct=7.0)
    counts = torch.tensor([3.0, 5.0, 2.0], dtype=torch.float64)
    sums = train_step(model, _micro(2.0, 1.0), counts, 1, contextlib.nullcontext())
    assert sums.loss.dtype == torch.float64 and sums.loss.device == counts.device
    assert _slots(sums).tolist() == [1.5 * 3, 7.0 * 2, 2.5 * 3, 7.0 * 2, 4.0 * 3, 7.0 * 2]
    assert model.w.grad.item() == pytest.approx(3 * (1.5 / 3 + 2.5 / 5 + 4.0 / 2))
    assert not sums.loss.requires_grad  # metrics, detached from the graph


def _batch(mlm: list[list[int]], sbo: list[list[int]] | None = None, nsp: list[int] | None = None) -> dict:
    b = {"mlm_labels": torch.tensor(mlm)}
    if sbo is not None:
        b["sbo_labels"] = torch.tensor(sbo)
    if nsp is not None:
        b["nsp_labels"] = torch.tensor(nsp)
    return b


def test_target_counts_count_labels_that_are_not_ignored():
    x = IGNORE
    assert target_counts(_batch([[5, x, 7], [x, x, 9]])) == [3.0, 0.0, 0.0]
    assert target_counts(_batch([[5, x], [x, x]], sbo=[[x, 4], [x, x]], nsp=[0, 1])) == [1.0, 1.0, 2.0]
    assert target_counts(_batch([[x, x]], sbo=[[x, x]], nsp=[1])) == [0.0, 0.0, 1.0]


def test_global_counts_sum_micro_batches_and_carry_the_flag():
    x = IGNORE
    micro = [_batch([[5, x, 7]], sbo=[[5, x, 7]], nsp=[1]), _batch([[x, 3, 3], [2, 2, 2]], sbo=[[x, x, 3], [x, x, x]], nsp=[0, 0])]
    got = global_counts(micro, 1, torch.device("cpu"), flag=1.0)
    assert got.targets.dtype == torch.float64 and got.pack().tolist() == [7.0, 3.0, 3.0, 1.0]
    assert global_counts(micro[:1], 1, "cpu").pack().tolist() == [2.0, 2.0, 1.0, 0.0]


def test_counts_and_sums_live_on_the_training_device():
    """The counts go to the device the step runs on, and the sums are made there (no host round trip).
    The meta device stands in for an accelerator on a CPU-only machine: same code path, no data."""
    meta = torch.device("meta")
    counts = global_counts([_batch([[5, IGNORE]])], 1, meta)
    assert counts.targets.device == meta and counts.targets.dtype == torch.float64 and counts.pack().shape == (4,)
    model = _Linear({"mlm": 2.0}).to(meta)
    sums = train_step(model, [{"scale": torch.ones((), device=meta)}], counts.targets, 1, contextlib.nullcontext())
    assert sums.loss.device == meta and sums.loss.dtype == torch.float64 and _slots(sums).shape == (6,)
    assert model.w.grad is not None and model.w.grad.device == meta
