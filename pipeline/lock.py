"""The run folder's lock: ``DIR/.lock``, created only if absent, naming the run that owns it.

Locally the file is created with ``O_CREAT | O_EXCL``; on ``gs://`` with the generation
precondition ``if_generation_match=0`` (the object is written only if no object has that
name), through google-cloud-storage. The gs:// path cannot be tested offline; the local one
is tested with real processes (tests/test_run_folder.py).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field

from apache_beam.io.filesystems import FileSystems

from transforms.layout import LOCK, join


class LockHeld(Exception):
    """Another run holds the folder; ``owner`` is its lock, ``stale`` says if it looks dead."""

    def __init__(self, path: str, owner: Lock | None, stale: bool, why: str):
        super().__init__(path, owner, stale, why)
        self.path, self.owner, self.stale, self.why = path, owner, stale, why

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"


@dataclass(frozen=True)
class Lock:
    run_id: str
    host: str
    pid: int
    started_at: str
    token: str  # this attempt's own id: the commit removes the lock only if it is still ours
    # True when the job runs in the launcher's process group (DirectRunner): the launcher's
    # death is the job's. A remote job (Dataflow) outlives its launcher: only age counts.
    local: bool = True
    # Set only on a lock read back that is not one this tool writes (garbage, a link): what
    # it is. Never written to the file.
    problem: str | None = field(default=None, compare=False)

    @classmethod
    def new(cls, run_id: str, local: bool = True) -> Lock:
        return cls(
            run_id,
            socket.gethostname(),
            os.getpid(),
            datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            uuid.uuid4().hex,
            local,
        )

    def describe(self) -> str:
        if self.problem:
            return f"an unreadable lock ({self.problem})"
        return f"run {self.run_id!r} (host {self.host}, pid {self.pid}, started {self.started_at})"

    def age_seconds(self) -> float:
        try:
            started = datetime.datetime.fromisoformat(self.started_at)
        except ValueError:
            return float("inf")
        return time.time() - started.timestamp()

    def stale_reason(self, lock_timeout: float) -> str | None:
        """Why this lock's owner is presumed dead, or None while it may be alive."""
        if self.problem:  # no run to wait for: nothing names one
            return "it names no run: corrupt, or not written by this tool"
        if self.local and self.host == socket.gethostname() and not _alive(self.pid):
            return f"its process {self.pid} on {self.host} is gone"
        if self.age_seconds() > lock_timeout:
            return f"it is older than --lock_timeout {lock_timeout:g} s"
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is gone too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def lock_path(output_dir: str) -> str:
    return join(output_dir, LOCK)


# What each field of a lock file must hold; bool is not an int here.
_TYPES = {"run_id": str, "host": str, "pid": int, "started_at": str, "token": str, "local": bool}
_DEFAULTS = {"local": True}  # a lock written before the field existed
MAX_LOCK_BYTES = 64 * 1024  # a lock is a few hundred bytes: anything larger is not one


def _unreadable(problem: str) -> Lock:
    return Lock("unknown", "unknown", -1, "unknown", "unknown", problem=problem)


def read(output_dir: str) -> Lock | None:
    """The folder's lock, None when there is none. A lock this tool did not write (garbage,
    a symbolic link, a folder) is returned with ``problem`` saying what it is: an owner we
    cannot name, stale at once (``stale_reason``)."""
    path = lock_path(output_dir)
    if "://" not in path:  # a link is looked at, never followed
        if os.path.islink(path):
            return _unreadable(f"{path} is a symbolic link to {os.readlink(path)}")
        if os.path.isdir(path):
            return _unreadable(f"{path} is a folder")
        if os.path.lexists(path) and not os.path.isfile(path):  # a FIFO would block a read
            return _unreadable(f"{path} is not a regular file")
    if not FileSystems.exists(path):
        return None
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            data = f.read(MAX_LOCK_BYTES + 1)
        if len(data) > MAX_LOCK_BYTES:
            return _unreadable(f"{path} is larger than {MAX_LOCK_BYTES} bytes")
        fields = json.loads(data.decode("utf-8"))
    except Exception as e:  # noqa: BLE001 - half-written or foreign: an owner we cannot name
        return _unreadable(f"{path} is not a JSON lock: {' '.join(str(e).split())[:120]}")
    if not isinstance(fields, dict):
        return _unreadable(f"{path} holds JSON {type(fields).__name__}, not a lock")
    wrong = [  # exactly these types: True is not a pid
        k for k, kind in _TYPES.items() if type(fields.get(k, _DEFAULTS.get(k))) is not kind
    ]
    if wrong:
        return _unreadable(f"{path} lacks or mistypes {', '.join(wrong)}")
    return Lock(**{k: fields[k] for k in _TYPES if k in fields})


def create(output_dir: str, lock: Lock) -> None:
    """Create the lock if no lock exists, atomically; LockHeld otherwise."""
    path = lock_path(output_dir)
    data = json.dumps({k: v for k, v in asdict(lock).items() if k in _TYPES}, indent=2).encode()
    if path.startswith("gs://"):
        created = _create_gcs(path, data)
    else:
        os.makedirs(output_dir, exist_ok=True)
        # written whole under a private name, then linked to .lock if absent: no reader ever
        # sees a lock half written (it would be an unreadable lock, stale at once)
        written = f"{path}.{lock.token}"
        with open(written, "xb") as f:
            f.write(data)
        try:
            os.link(written, path)
            created = True
        except FileExistsError:
            created = False
        except OSError:  # a filesystem without hard links: create in place, O_EXCL
            created = _create_in_place(path, data)
        finally:
            os.remove(written)
    if not created:
        owner = read(output_dir)
        raise LockHeld(path, owner, False, f"locked by {owner.describe() if owner else 'a run'}")


def _create_in_place(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def _create_gcs(path: str, data: bytes) -> bool:  # pragma: no cover - needs Cloud Storage
    from google.api_core.exceptions import PreconditionFailed
    from google.cloud import storage

    bucket, name = path[len("gs://") :].split("/", 1)
    blob = storage.Client().bucket(bucket).blob(name)
    try:
        blob.upload_from_string(data, content_type="application/json", if_generation_match=0)
    except PreconditionFailed:
        return False
    return True


def release(output_dir: str, token: str) -> bool:
    """Delete the lock if it is still the one with ``token``; True when deleted."""
    current = read(output_dir)
    if current is None or current.token != token:
        return False
    FileSystems.delete([lock_path(output_dir)])
    return True


def replace(output_dir: str, lock: Lock, stale: Lock | None) -> None:
    """Create ``lock``; when the folder had the lock ``stale`` (judged stale by the caller),
    delete it first, only if it is still that one: LockHeld when another run replaced it
    meanwhile (two --resume of one folder at once take it once). Locally the check, delete
    and create are one step among takers (an flock on the folder)."""
    if stale is None:
        create(output_dir, lock)
        return
    with _takers_one_at_a_time(output_dir):
        current = read(output_dir)
        if current is not None and (current != stale or current.problem != stale.problem):
            raise LockHeld(
                lock_path(output_dir), current, False, f"taken by {current.describe()} meanwhile"
            )
        remove_stale(output_dir)
        create(output_dir, lock)


@contextlib.contextmanager
def _takers_one_at_a_time(output_dir: str):
    if "://" in output_dir:  # gs://: the generation precondition of create
        yield
        return
    fd = os.open(output_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def remove_stale(output_dir: str) -> None:
    """Delete a stale lock; a symbolic link is removed itself, never what it points to."""
    path = lock_path(output_dir)
    if "://" not in path and os.path.islink(path):
        os.remove(path)
    elif FileSystems.exists(path):
        FileSystems.delete([path])
