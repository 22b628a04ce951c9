"""What every job this package launches (``python -m pipeline``, ``python -m pipeline.compare``)
shares before it starts: the usage error and the Beam options it sets.

Beam is imported inside the functions, so a command's ``--help`` does not load it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading

REPO_SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


class UsageError(ValueError):
    """A bad option or argument: the message says what to do (exit 2, before any work)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM while a command runs; ``exit_code`` is 128 + the signal's
    number (130, 143), as a shell reports a process the signal ended."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.exit_code = signum, 128 + signum


_received: list[int] = []  # the signal interruptible() caught, if any
_before: set[int] = set()  # the processes this one had started before interruptible()


def received() -> int | None:
    """The signal that interrupted the command, even when a library wrapped the Interrupted
    it raised in an error of its own (Beam does, for a DoFn it was running)."""
    return _received[0] if _received else None


@contextlib.contextmanager
def interruptible():
    """SIGINT and SIGTERM raise Interrupted in the main thread, once: a second signal while
    the first is handled is ignored, so the cleanup runs to its end and says one line. The
    previous handlers are back afterwards. Outside the main thread, nothing changes."""
    _received.clear()
    _before.clear()
    _before.update(_descendants())
    handled = (signal.SIGINT, signal.SIGTERM)

    def interrupt(signum, frame):
        for each in handled:
            signal.signal(each, signal.SIG_IGN)
        _received.append(signum)
        raise Interrupted(signum)

    main = threading.current_thread() is threading.main_thread()
    previous = {each: signal.signal(each, interrupt) for each in handled} if main else {}
    try:
        yield
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)
        _received.clear()  # a later run in this process starts uninterrupted


def _descendants() -> list[int]:
    """The pids of every process this one started, and theirs (Linux: read from /proc;
    elsewhere none)."""
    children: dict[int, list[int]] = {}
    try:
        names = [n for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []
    for name in names:
        try:
            with open(f"/proc/{name}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(name))
    found, pending = [], list(children.get(os.getpid(), []))
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


def stop_children() -> list[int]:
    """SIGKILL the processes started since interruptible() began, and theirs (DirectRunner's
    worker processes, started through a shell), so none writes into the run folder after an
    interruption; returns their pids. A caller's own earlier children are left alone."""
    found = [pid for pid in _descendants() if pid not in _before]
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return found


def runner_name(pipeline_options) -> str:
    from apache_beam.options.pipeline_options import StandardOptions

    return pipeline_options.view_as(StandardOptions).runner or "DirectRunner"


def ship_package(pipeline_options) -> None:
    """On Dataflow, ship this package to the workers: ``--setup_file`` defaults to this
    repository's setup.py."""
    from apache_beam.options.pipeline_options import SetupOptions

    setup = pipeline_options.view_as(SetupOptions)
    if "Dataflow" in runner_name(pipeline_options) and not setup.setup_file:
        setup.setup_file = REPO_SETUP


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that refuses as our own checks do: one line, exit 2 (argparse wrote
    its whole usage first, 60 lines for python -m pipeline, before ``--steps 2.5`` 's error)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def command_parser(
    prog: str, description: str, beam_examples: str = "--runner"
) -> argparse.ArgumentParser:
    """The parser of one of this package's commands: every option's default shown in --help,
    no abbreviated option names (a prefix of ours could be one of Beam's options), and a
    refusal in one line."""
    return Parser(
        prog=prog,
        description=f"{description} Options not listed here are Beam's ({beam_examples}, ...).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
