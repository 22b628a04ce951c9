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
        return (
            f"progress: {done}/{self.matched} images ({pct:.0f}%), {rate:.2f} images/s, ETA {eta}"
        )

    def _print(self, final: bool = False) -> None:
        # on a terminal one line is rewritten in place; in a file or pipe, one line each time
        if _is_terminal(self.stream):
            print(f"\r\x1b[K{self.line()}", end="\n" if final else "", file=self.stream, flush=True)
        else:
            print(self.line(), file=self.stream, flush=True)

    def run(self):
        while not self.stopped.wait(self.interval):
            self._print()

    def stop(self):
        """Stop, and print the final line."""
        self.stopped.set()
        self._print(final=True)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
