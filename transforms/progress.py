"""Live progress on a local runner: the steps that finish an image count it into a small file
per DoFn instance in a local folder; the launcher sums the files (pipeline/progress.py)."""

from __future__ import annotations

import os
import time
import uuid


class Tally:
    """Finished images of one DoFn instance, written to ``folder/<pid>-<uuid>`` at most once
    a second (and on flush), by atomic replace."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, f"{os.getpid()}-{uuid.uuid4().hex}")
        self.count, self.last = 0, 0.0

    def add(self, n: int = 1) -> None:
        self.count += n
        if time.monotonic() - self.last > 1.0:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        temporary = f"{self.path}.tmp"
        with open(temporary, "w") as f:
            f.write(str(self.count))
        os.replace(temporary, self.path)


def tally(folder: str) -> int:
    """Images finished so far, over every instance that wrote into ``folder``."""
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


class CountsProgress:
    """Mixin for DoFns that finish images: ``progress(n)`` counts them when the run has a
    progress folder (``self.progress_folder``), and nothing otherwise."""

    progress_folder: str | None = None
    _tally: Tally | None = None

    def progress(self, n: int = 1) -> None:
        if self.progress_folder is None:
            return
        if self._tally is None:
            self._tally = Tally(self.progress_folder)
        self._tally.add(n)

    def finish_bundle(self):
        if self._tally is not None:
            self._tally.flush()
