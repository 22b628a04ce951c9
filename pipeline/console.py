"""Keep the console to the progress line while DirectRunner's worker processes run.

With ``--direct_running_mode multi_processing`` every worker is a new Python process that
imports TensorFlow (C++ start-up banners written straight to file descriptor 2, which no log
level silences) and parses the job's options (Beam's "Discarding unparseable args" warning,
forwarded to the launcher's log). While the job runs, file descriptor 2 -- inherited by the
workers -- points at ``DIR/workers.log``; progress lines go to the console saved before.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

WORKER_LOG = "workers.log"


@contextlib.contextmanager
def quiet_start_up():
    """Hold back what TensorFlow's C++ start-up writes to file descriptor 2 (absl's
    "before InitializeLog" banner, oneDNN and CUDA notices: TF_CPP_MIN_LOG_LEVEL does not reach
    them) while TensorFlow is imported and its devices found; replay it if that fails, or
    when TF_CPP_MIN_LOG_LEVEL asks for TensorFlow's informational messages (0 or 1)."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") < "2":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            import tensorflow as tf

            tf.config.list_physical_devices()  # CUDA's probe and its notices happen here
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read())
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def worker_processes(pipeline_options) -> bool:
    """True when the job runs in separate local worker processes (multi-process DirectRunner)."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    runner = pipeline_options.view_as(StandardOptions).runner or "DirectRunner"
    mode = pipeline_options.view_as(DirectOptions).direct_running_mode
    return "Direct" in str(runner) and mode == "multi_processing"


class WorkerLog:
    """Redirect file descriptor 2 to a temporary file until ``close()``, which appends what the
    workers printed to ``DIR/workers.log`` (a local run folder; for a remote one the file
    stays in the temporary folder, at ``path``). Nothing printed, no file; a job killed
    mid-run leaves nothing in the run folder. ``console`` is the terminal's stderr meanwhile.
    A no-op (``console`` is sys.stderr) when not enabled."""

    def __init__(self, output_dir: str, enabled: bool):
        self.console, self.path, self._saved = sys.stderr, None, None
        if not enabled:
            return
        self._output_dir = output_dir
        descriptor, self._temporary = tempfile.mkstemp(prefix="ig-workers-", suffix=".log")
        sys.stderr.flush()
        self._saved = os.dup(2)
        os.dup2(descriptor, 2)
        os.close(descriptor)
        self.console = os.fdopen(os.dup(self._saved), "w", buffering=1)

    def close(self) -> None:
        if self._saved is None:
            return
        sys.stderr.flush()
        self.console.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._saved = None
        self.console.close()
        self.console = sys.stderr
        if os.path.getsize(self._temporary) == 0:
            os.remove(self._temporary)
            return
        if "://" in self._output_dir:
            self.path = self._temporary
            return
        os.makedirs(self._output_dir, exist_ok=True)
        self.path = os.path.join(self._output_dir, WORKER_LOG)
        with open(self._temporary, "rb") as source, open(self.path, "ab") as log:
            log.write(source.read())
        os.remove(self._temporary)
