"""The local runner must deliver every chunk of a stage's input to its worker processes.

This was the root cause of the blocks the 2-worker runner lost before issue 19 (docs/pipeline.md,
"Lost blocks"). In Beam 2.77, a timer thread flushes the runner's stream to a worker once a second:
it hands on get(), then _clear()s. The runner's thread writes the stage's input chunks into the same
stream, and the flush does not hold the writer's lock. A chunk written in between is dropped without
an error. `pipeline.run.local_runner` turns that timer off.

Under load the window opens by itself. Here it is opened on purpose, in this (the launcher)
process. The runner's thread pauses between two chunks, as a descheduled thread does. A data element
waits before it enters the send queue, as it does when the 100 MB queue is full. Neither changes what
is sent. A Flatten of six stages' outputs is then read back as several chunks per worker, and every
element must arrive.
"""

from __future__ import annotations

import time
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.worker import data_plane
from apache_beam.testing.util import assert_that, equal_to

from pipeline.run import local_runner

PAUSE_BETWEEN_CHUNKS = 0.4  # seconds; the timer flushes every 1 s, so a part of 6 chunks spans 2 flushes
SEND_QUEUE_WAIT = 0.3  # seconds before a data element is queued: the flush's get()..._clear() window
BRANCHES = 6


class _PausedWriter:
    """The runner's end of one stream to a worker, with the runner thread descheduled between writes."""

    def __init__(self, stream: Any, chunk_counts: list[int]) -> None:
        self.stream, self.chunks, self.chunk_counts = stream, 0, chunk_counts

    def write(self, chunk: bytes) -> None:
        if self.chunks:
            time.sleep(PAUSE_BETWEEN_CHUNKS)
        self.stream.write(chunk)
        self.chunks += 1

    def close(self) -> None:
        self.chunk_counts.append(self.chunks)
        self.stream.close()


def test_every_chunk_of_a_stage_input_reaches_the_workers(monkeypatch) -> None:
    chunk_counts: list[int] = []
    output_stream = data_plane._GrpcDataChannel.output_stream
    enqueue = data_plane._GrpcDataChannel._enqueue_to_send

    def paused_output_stream(self: Any, instruction_id: str, transform_id: str) -> _PausedWriter:
        return _PausedWriter(output_stream(self, instruction_id, transform_id), chunk_counts)

    def slow_enqueue(self: Any, element: Any) -> None:
        if isinstance(element, data_plane.beam_fn_api_pb2.Elements.Data) and element.data:
            time.sleep(SEND_QUEUE_WAIT)
        enqueue(self, element)

    monkeypatch.setattr(data_plane._GrpcDataChannel, "output_stream", paused_output_stream)
    monkeypatch.setattr(data_plane._GrpcDataChannel, "_enqueue_to_send", slow_enqueue)

    expected = [b * 1000 + i for b in range(BRANCHES) for i in range(40)]
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    with beam.Pipeline(runner=local_runner(), options=options) as p:
        branches = [
            p
            | f"Create{b}" >> beam.Create(expected[b * 40 : (b + 1) * 40])
            | f"Spread{b}" >> beam.Reshuffle()  # one stage per branch, run as one bundle per worker
            | f"Pass{b}" >> beam.Map(lambda x: x)
            for b in range(BRANCHES)
        ]
        merged = branches | "Merge" >> beam.Flatten() | "AfterMerge" >> beam.Map(lambda x: x)
        assert_that(merged, equal_to(expected))  # raises in the worker if an element is missing
    # The Flatten's reader got its input as several chunks per worker: the path that lost blocks.
    assert max(chunk_counts) >= 4, chunk_counts
