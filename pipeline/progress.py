"""Progress lines on DirectRunner: workers tally finished images into small files in a local
folder; a thread in the launcher sums them and prints done / matched, rate and ETA."""
from __future__ import annotations

import os
import sys
import threading
import time
import uuid

import apache_beam as beam


class TallyFn(beam.DoFn):
    """Counts the elements it sees into ``folder/<pid>-<id>`` (rewritten at most once a second)."""

    def __init__(self, folder: str):
        self.folder = folder

    def setup(self):
        self.path = os.path.join(self.folder, f"{os.getpid()}-{uuid.uuid4().hex}")
        self.count, self.last = 0, 0.0

    def process(self, _):
        self.count += 1
        if time.monotonic() - self.last > 1.0:
            self._flush()

    def finish_bundle(self):
        self._flush()

    def _flush(self):
        self.last = time.monotonic()
        temporary = f"{self.path}.tmp"
        with open(temporary, "w") as f:
            f.write(str(self.count))
        os.replace(temporary, self.path)


def tally(folder: str) -> int:
    total = 0
    for name in os.listdir(folder):
        if name.endswith(".tmp"):
            continue
        try:
            with open(os.path.join(folder, name)) as f:
                total += int(f.read() or 0)
        except (OSError, ValueError):
            continue
    return total


class ProgressReporter(threading.Thread):
    """Prints ``progress: done/matched images (pct), rate, ETA`` every ``interval`` seconds."""

    def __init__(self, folder: str, matched: int, interval: float, stream=sys.stderr):
        super().__init__(daemon=True)
        self.folder, self.matched, self.interval, self.stream = folder, matched, interval, stream
        self.stopped = threading.Event()
        self.started_at = time.monotonic()

    def line(self) -> str:
        done = min(tally(self.folder), self.matched)
        elapsed = time.monotonic() - self.started_at
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f"{(self.matched - done) / rate:.0f}s" if rate > 0 else "unknown"
        pct = 100.0 * done / self.matched if self.matched else 100.0
        return (f"progress: {done}/{self.matched} images ({pct:.0f}%), {rate:.2f} images/s, "
                f"ETA {eta}")

    def run(self):
        while not self.stopped.wait(self.interval):
            print(self.line(), file=self.stream, flush=True)

    def stop(self):
        self.stopped.set()
