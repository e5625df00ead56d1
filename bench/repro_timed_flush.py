"""Run `python -m pipeline` with a detector on Beam's timed flush, the root cause of the lost blocks.

See docs/pipeline.md, "Lost blocks on the multi-process runner: root cause and fix". The detector
patches Beam 2.77's `TimeBasedBufferingClosableOutputStream.flush` in this (the launcher) process. It
does what Beam's flush does, and also counts the bytes written between the flush's get() and its
_clear(): those bytes are the ones the race throws away. It runs whichever `pipeline` package comes
first on the path, so it also reproduces the graph from before issue 19:

    git worktree add /tmp/pre19 3c241f3^
    cd /tmp/pre19 && PYTHONPATH=. REPRO_WIDEN=0.9 REPRO_SLOW_WRITE=0.8 \\
        python $REPO/bench/repro_timed_flush.py --input ... --vocab ... --output OUT --no-annotate \\
        --direct_running_mode=multi_processing --direct_num_workers=2

Environment:
  REPRO_WIDEN=S       the flush sleeps S seconds before it clears, as a blocked send queue makes it wait
  REPRO_SLOW_WRITE=S  the runner thread pauses S seconds between two chunks of a stage's input, as under load
  REPRO_FIX=1         write() takes the flush's lock: the race is gone, and so are the lost bytes
  REPRO_TIMER_OFF=1   today's fix on any graph: worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0, so no timed
                      flush runs at all (pipeline.run.local_runner does this itself)

Today's `pipeline.run.local_runner()` turns the timer off, so on today's code the detector finds no
timed flush at all. The last line on stderr sums up: timed flushes run, bytes lost, flushes that lost
bytes, and the sends of a stage's input in more than one chunk.
"""

from __future__ import annotations

import atexit
import collections
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.worker import data_plane

WIDEN = float(os.environ.get("REPRO_WIDEN", "0"))
SLOW_WRITE = float(os.environ.get("REPRO_SLOW_WRITE", "0"))
FIX = os.environ.get("REPRO_FIX") == "1"
TIMER_OFF = os.environ.get("REPRO_TIMER_OFF") == "1"

seen: collections.Counter[str] = collections.Counter()
lock = threading.Lock()


def _log(message: str) -> None:
    print(f"repro: {message}", file=sys.stderr, flush=True)


def detecting_flush(self: Any) -> None:
    """Beam's flush (SizeBasedBufferingClosableOutputStream.flush under _flush_lock), with the count."""
    with self._flush_lock:
        if not self._flush_callback:
            return
        with lock:
            seen["timed_flushes"] += 1
        data = self.get()
        self._flush_callback(data)
        if WIDEN:
            time.sleep(WIDEN)
        written_meanwhile = self.size() - len(data)
        if written_meanwhile:
            with lock:
                seen["lost_bytes"] += written_meanwhile
                seen["lossy_flushes"] += 1
            _log(f"a timed flush dropped {written_meanwhile} bytes written during it")
        self._clear()


def locked_write(self: Any, b: bytes, nested: bool = False) -> None:
    with self._flush_lock:
        data_plane.SizeBasedBufferingClosableOutputStream.write(self, b, nested)


_send_input_to_worker = fn_runner.BundleManager._send_input_to_worker


def _paused(chunks: list[bytes]) -> Iterator[bytes]:
    for i, chunk in enumerate(chunks):
        if SLOW_WRITE and i:
            time.sleep(SLOW_WRITE)
        yield chunk


def send_input_to_worker(self: Any, process_bundle_id: str, read_transform_id: str, byte_streams: Any) -> None:
    """Beam's own _send_input_to_worker, fed the chunks with an optional pause between two, and a log line."""
    chunks = list(byte_streams or [])
    started = time.time()
    _send_input_to_worker(self, process_bundle_id, read_transform_id, _paused(chunks))
    if len(chunks) > 1:
        with lock:
            seen["multi_chunk_sends"] += 1
        _log(f"{read_transform_id} ({process_bundle_id}): {len(chunks)} chunks, "
             f"{sum(map(len, chunks)) / 1e6:.1f} MB in {time.time() - started:.2f} s")


def main() -> int:
    data_plane.TimeBasedBufferingClosableOutputStream.flush = detecting_flush
    if FIX:
        data_plane.TimeBasedBufferingClosableOutputStream.write = locked_write
    fn_runner.BundleManager._send_input_to_worker = send_input_to_worker
    if TIMER_OFF:
        from apache_beam.runners.portability.fn_api_runner import worker_handlers

        worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0
    atexit.register(lambda: _log(f"summary {dict(seen)}"))
    from pipeline.run import main as pipeline_main

    return pipeline_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
