"""Multi-process DirectRunner: the console shows progress, worker start-up chatter goes to
DIR/workers.log."""

import os
import subprocess
import sys

from job_argv import job_argv
from PIL import Image

from pipeline.progress import ProgressReporter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHATTER = ("absl::InitializeLog", "Discarding unparseable args", "oneDNN custom operations")


def test_worker_start_up_chatter_goes_to_the_run_folder_not_the_console(tiny_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (9, 7), (40 * i, 30, 200)).save(folder / f"x{i}.png")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            *job_argv(f"{folder}/*.png", str(out), tiny_model),
            "--steps",
            "4",
            "--tolerance",
            "0",
            "--progress_interval",
            "0.5",
            "--direct_num_workers",
            "2",
            "--direct_running_mode",
            "multi_processing",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert "attributed 2 of 2 images" in result.stdout
    assert "progress: 2/2 images (100%)" in result.stderr
    assert not [c for c in CHATTER if c in console], console[-3000:]
    log = (out / "workers.log").read_text()
    assert "absl::InitializeLog" in log  # each worker's TensorFlow, straight from C++


class FakeTerminal:
    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def isatty(self):
        return True


def test_progress_rewrites_one_line_on_a_terminal(tmp_path):
    stream = FakeTerminal()
    reporter = ProgressReporter(str(tmp_path), matched=4, interval=60, stream=stream)
    reporter._print()
    reporter.stop()
    assert stream.text.count("\n") == 1 and stream.text.endswith("\n")
    assert stream.text.count("\r\x1b[Kprogress: 0/4 images") == 2
