"""Answer decoding as BERT's run_squad.py: per window the n-best start and end logits, spans with
start <= end, both in the window's context, start in its max-context window, at most
`max_answer_length` pieces; the best start+end score over every window of the question; the answer
text cut from the context by the tokenizer's character offsets (original casing and spacing).

SQuAD 2.0: the null score is start[CLS] + end[CLS] of the window where it is smallest; the
prediction is "" when null - best span > `null_threshold` (BERT's null_score_diff_threshold, 0), and
na_prob.json holds that difference (BERT's null_odds), for the official best-threshold sweep.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from finetune.data import SquadSet
from finetune.features import Features


@dataclass(frozen=True)
class DecodeConfig:
    n_best: int = 20
    max_answer_length: int = 30
    null_threshold: float = 0.0


@dataclass(frozen=True)
class Decoded:
    predictions: dict[str, str]  # question id -> answer text ("" = no answer at cfg.null_threshold)
    na_probs: dict[str, float] | None  # v2.0 only: null score - best span score
    spans: dict[str, str]  # question id -> the best non-null span ("" only when no span is valid)

    def at_threshold(self, threshold: float) -> dict[str, str]:
        """v2.0 predictions with another null threshold: "" where null - best span > threshold."""
        if self.na_probs is None:
            return dict(self.spans)
        return {k: "" if self.na_probs[k] > threshold else text for k, text in self.spans.items()}


def _top(x: np.ndarray, n: int) -> np.ndarray:
    return np.argsort(-x, kind="stable")[:n]  # highest first, lower index first on ties (BERT's sorted())


def best_span(start: np.ndarray, end: np.ndarray, lo: int, hi: int, max_context: np.ndarray,
              cfg: DecodeConfig) -> tuple[float, int, int] | None:
    """(score, start, end) of the best valid span of one window, sequence positions; None if none is valid.
    lo..hi (exclusive) are the context's sequence positions; candidates come from the top n_best of the
    whole sequence, as BERT, in (start rank, end rank) order."""
    s_idx, e_idx = _top(start, cfg.n_best), _top(end, cfg.n_best)
    s, e = s_idx[:, None], e_idx[None, :]
    if hi <= lo:
        return None
    in_ctx_s = (s >= lo) & (s < hi)
    starts_here = in_ctx_s & max_context[np.clip(s - lo, 0, hi - lo - 1)]
    valid = starts_here & (e >= lo) & (e < hi) & (e >= s) & (e - s + 1 <= cfg.max_answer_length)
    if not np.any(valid):
        return None
    score = np.where(valid, start[s] + end[e], -np.inf)
    k = int(np.argmax(score))  # row-major: the first best in BERT's candidate order
    i, j = divmod(k, score.shape[1])
    return float(score[i, j]), int(s_idx[i]), int(e_idx[j])


def decode(data: SquadSet, feats: Features, start_logits: list[np.ndarray], end_logits: list[np.ndarray],
           cfg: DecodeConfig) -> Decoded:
    """Predictions for every question of `data` from per-window logits (each cut to its window's length)."""
    v2 = data.version == "2.0"
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    for w, s, e in zip(feats.windows, start_logits, end_logits, strict=True):
        qi = w.question_index
        null[qi] = min(null.get(qi, np.inf), float(s[0] + e[0]))
        lo = w.context_offset
        found = best_span(s, e, lo, lo + w.doc_len, w.max_context, cfg)
        if found is None or (qi in best and found[0] <= best[qi][0]):
            continue  # an earlier window keeps a tie, as BERT's stable sort
        q = data.questions[qi]
        off = feats.offsets[q.context_index]
        a, b = w.doc_start + found[1] - lo, w.doc_start + found[2] - lo
        best[qi] = (found[0], q.context[off[a, 0]:off[b, 1]])
    spans: dict[str, str] = {}
    na_probs: dict[str, float] = {}
    for qi, q in enumerate(data.questions):
        # No valid span anywhere (tiny windows, an untrained model): BERT's "empty" entry, score 0, text "".
        score, spans[q.qid] = best.get(qi, (0.0, ""))
        if v2:
            na_probs[q.qid] = null[qi] - score
    out = Decoded({}, na_probs if v2 else None, spans)
    return dataclasses.replace(out, predictions=out.at_threshold(cfg.null_threshold))
