"""SQuAD questions -> model windows ("features"), as BERT's run_squad.py builds them, with the fast
tokenizer's character offsets in place of BERT's whitespace-token bookkeeping.

Each window is `[CLS] question [SEP] context-slice [SEP]`: the question cut to `max_query_length`
pieces, the context covered by windows of up to `max_seq_length - len(question) - 3` pieces whose
starts are `doc_stride` pieces apart (BERT's meaning of stride: the step between window starts, not the
overlap). Every context piece remembers the window where it has the most context on both sides (BERT's
`_check_is_max_context`); decoding starts answers only there. Contexts are tokenised once, however many
questions share them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor

from contract.tokenizer import Vocabulary
from finetune.data import Question, SquadSet


@dataclass(frozen=True)
class FeatureConfig:
    max_seq_length: int = 512  # paper Appendix B
    doc_stride: int = 128
    max_query_length: int = 64

    def __post_init__(self) -> None:
        if self.max_seq_length < self.max_query_length + 4:
            raise ValueError(f"--max-seq-length {self.max_seq_length} leaves no room for context after a "
                             f"{self.max_query_length}-piece question")
        if self.doc_stride < 1:
            raise ValueError("--doc-stride must be >= 1")


@dataclass
class Window:
    """One model input. Sequence positions: [CLS]=0, question 1..q, [SEP], context from `context_offset`."""

    question_index: int  # into SquadSet.questions
    input_ids: np.ndarray  # int64, unpadded
    context_offset: int  # sequence position of the window's first context piece
    doc_start: int  # that piece's index among the context's pieces
    doc_len: int
    max_context: np.ndarray  # bool per window context piece
    start_position: int  # training target (0 = [CLS]: no answer in this window)
    end_position: int


@dataclass
class Features:
    windows: list[Window]
    offsets: list[np.ndarray]  # per context (SquadSet.contexts order): [pieces, 2] character spans

    def __len__(self) -> int:
        return len(self.windows)


def window_starts(n_pieces: int, max_pieces: int, stride: int) -> list[int]:
    """BERT's doc spans: from 0, step min(length, stride), until a window reaches the last piece."""
    starts, start = [], 0
    while True:
        starts.append(start)
        length = min(n_pieces - start, max_pieces)
        if start + length >= n_pieces:
            return starts
        start += min(length, stride)


def max_context_windows(n_pieces: int, starts: list[int], max_pieces: int) -> np.ndarray:
    """For each context piece, the window (index into starts) where min(left, right) context + 0.01 *
    window length is largest; the first such window on ties, as BERT."""
    score = np.full((len(starts), max(n_pieces, 1)), -np.inf)
    for w, s in enumerate(starts):
        length = min(n_pieces - s, max_pieces)
        j = np.arange(length)
        score[w, s:s + length] = np.minimum(j, length - 1 - j) + 0.01 * length
    return score.argmax(axis=0)


def answer_pieces(offsets: np.ndarray, start_char: int, end_char: int) -> tuple[int, int]:
    """First and last context piece overlapping the character span [start_char, end_char)."""
    first = int(offsets[:, 1].searchsorted(start_char, side="right"))
    last = int(offsets[:, 0].searchsorted(end_char, side="left")) - 1
    return first, last


def build_features(data: SquadSet, tok: Tokenizer, cfg: FeatureConfig, training: bool) -> Features:
    """Windows for every question (training: with start/end targets from the first answer)."""
    ids = Vocabulary.of(tok)
    ctx_enc = tok.encode_batch(data.contexts, add_special_tokens=False)
    ctx_ids = [np.asarray(e.ids, dtype=np.int64) for e in ctx_enc]
    offsets = [np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2) for e in ctx_enc]
    q_enc = tok.encode_batch([q.question for q in data.questions], add_special_tokens=False)
    cache: dict[tuple[int, int], tuple[list[int], np.ndarray]] = {}  # (context, room) -> windows
    windows: list[Window] = []
    for qi, (q, enc) in enumerate(zip(data.questions, q_enc, strict=True)):
        q_ids = np.asarray(enc.ids[: cfg.max_query_length], dtype=np.int64)
        room = cfg.max_seq_length - len(q_ids) - 3
        key = (q.context_index, room)
        if key not in cache:
            n = len(ctx_ids[q.context_index])
            starts = window_starts(n, room, cfg.doc_stride)
            cache[key] = (starts, max_context_windows(n, starts, room))
        starts, best_window = cache[key]
        head = np.concatenate([[ids.cls], q_ids, [ids.sep]])
        target = _target(q, offsets[q.context_index]) if training else None
        for w, s in enumerate(starts):
            piece_ids = ctx_ids[q.context_index]
            length = min(len(piece_ids) - s, room)
            start_pos = end_pos = 0
            if target is not None and s <= target[0] and target[1] < s + length:
                start_pos, end_pos = target[0] - s + len(head), target[1] - s + len(head)
            windows.append(Window(
                qi, np.concatenate([head, piece_ids[s:s + length], [ids.sep]]), len(head), s, length,
                best_window[s:s + length] == w, start_pos, end_pos))
    return Features(windows, offsets)


def _target(q: Question, offsets: np.ndarray) -> tuple[int, int] | None:
    """Context pieces of the first answer (BERT trains on the first); None when unanswerable."""
    if q.is_impossible:
        return None
    ans = q.answers[0]
    first, last = answer_pieces(offsets, ans.start, ans.end)
    if first > last:  # an answer made only of characters the tokenizer drops (whitespace, control chars)
        return None
    return first, last


def collate(windows: list[Window], pad_id: int, pad_to_multiple: int = 8) -> dict[str, Tensor]:
    """Right-padded batch: input_ids, token_type_ids (1 from the context on), attention_mask (bool),
    start/end_positions."""
    longest = max(len(w.input_ids) for w in windows)
    length = -(-longest // pad_to_multiple) * pad_to_multiple
    input_ids = np.full((len(windows), length), pad_id, dtype=np.int64)
    token_type = np.zeros((len(windows), length), dtype=np.int64)
    mask = np.zeros((len(windows), length), dtype=bool)
    for i, w in enumerate(windows):
        n = len(w.input_ids)
        input_ids[i, :n] = w.input_ids
        token_type[i, w.context_offset:n] = 1
        mask[i, :n] = True
    return {
        "input_ids": torch.from_numpy(input_ids), "token_type_ids": torch.from_numpy(token_type),
        "attention_mask": torch.from_numpy(mask),
        "start_positions": torch.tensor([w.start_position for w in windows]),
        "end_positions": torch.tensor([w.end_position for w in windows]),
    }
