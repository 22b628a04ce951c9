"""Progress lines on DirectRunner: the steps that finish images tally them into a local folder
(transforms/progress.py); a thread in the launcher sums them and prints done / matched, rate
and ETA."""
from __future__ import annotations

import sys
import threading
import time

from transforms.progress import tally


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
        """Stop, and print the final line."""
        self.stopped.set()
        print(self.line(), file=self.stream, flush=True)
