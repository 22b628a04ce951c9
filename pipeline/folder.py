"""Take the run folder before any work: refuse a folder in use or holding another run's
outputs, take the lock, and clear (``--overwrite``) or set aside (``--resume``) what an
earlier run left. The folder's life cycle is in README ("The run folder's life cycle")."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import lock as locks
from pipeline.launch import UsageError
from transforms.files import (
    RunFolderError,
    delete_matching,
    exists,
    publish_table,
    read_manifest,
)
from transforms.layout import (
    ARTIFACT_FOLDERS,
    CONTRACT_FOLDERS,
    ERRORS,
    MANIFEST,
    MARKS,
    OUTPUTS,
    REPORT,
    STAGING,
    STRATEGIES,
    SUMMARIES,
    TEMPORARY_PREFIX,
    inputs_path,
    join,
    loads_dir,
    parts_dir,
    previous_dir,
    staging_dir,
)
from transforms.reuse import PreviousRunError, check_digests

# The characters a part's name never holds (transforms/ids.py makes names of ASCII letters,
# digits, '-', '_' and '.'): a name from the manifest with one of these is not ours.
_NOT_IN_NAMES = ("/", "\\", "\0")


@dataclass(frozen=True)
class Taken:
    lock: locks.Lock
    resume_parts: str | None  # a folder whose summaries/ hold an interrupted attempt's rows
    listed: list[str] | None  # the interrupted attempt's input list, kept by --resume


def _local(path: str) -> bool:
    return "://" not in path


def _lexists(path: str) -> bool:
    return os.path.lexists(path) if _local(path) else exists(path)


def present_outputs(output_dir: str, outputs: tuple[str, ...] = OUTPUTS) -> list[str]:
    """Which of ``outputs`` (a run folder's, or another folder kind's, e.g. the sanity
    check's) the folder holds."""
    return [name for name in outputs if _lexists(join(output_dir, name))]


def take(
    output_dir: str,
    *,
    run_id: str,
    overwrite: bool,
    resume: bool,
    lock_timeout: float,
    local: bool = True,
    outputs: tuple[str, ...] = OUTPUTS,
) -> Taken:
    """Lock ``output_dir`` for this run, or UsageError saying why not and what to do. Every
    refusal comes before the lock is taken and before anything is deleted. ``outputs``: the
    names this kind of folder holds (a run's by default); a run folder holding some of them
    but none of ``MARKS`` is not one (another kind's caller makes its own check)."""
    refuse_links(output_dir, outputs)
    owner = locks.read(output_dir)
    if owner is not None:
        path = locks.lock_path(output_dir)
        if _local(path) and os.path.isdir(path) and not os.path.islink(path):
            raise UsageError(
                f"--output_dir {output_dir}: {owner.problem}, not a lock this tool writes: "
                f"nothing was deleted; remove it yourself or choose another --output_dir"
            )
        stale = owner.stale_reason(lock_timeout)
        if stale is None:
            raise UsageError(
                f"--output_dir {output_dir} is in use by {owner.describe()}: "
                f"wait for it to finish, or write to another folder"
            )
        if not (resume or overwrite):
            raise UsageError(
                f"--output_dir {output_dir} has a stale lock of "
                f"{owner.describe()} ({stale}): pass --resume to finish that run "
                f"or --overwrite to start again"
                if owner.problem is None
                else f"--output_dir {output_dir} has an unreadable lock ({owner.problem}; "
                f"{stale}): pass --overwrite to replace it (a link is removed, never "
                f"followed) or --resume to finish the run it was left by"
            )
    present = present_outputs(output_dir, outputs)
    if (
        present
        and outputs == OUTPUTS
        and not any(_lexists(join(output_dir, mark)) for mark in MARKS)
    ):
        raise UsageError(
            f"--output_dir {output_dir} is not a run folder (no manifest.json, no lock, no "
            f"{STAGING}) but holds {', '.join(present)}: this tool did not write them and "
            f"never deletes them, even with --overwrite; choose another --output_dir"
        )
    if present and not (resume or overwrite):
        raise UsageError(
            f"--output_dir {output_dir} holds another run's outputs "
            f"({', '.join(present)}): pass --overwrite to replace them, --resume "
            f"to finish an interrupted run, or choose another folder"
        )
    doomed = removable(output_dir, outputs) if overwrite and present else []
    mine = locks.Lock.new(run_id, local)
    try:
        locks.replace(output_dir, mine, stale=owner)
    except locks.LockHeld as e:
        raise UsageError(f"--output_dir {output_dir} is in use: {e}") from None
    try:
        if overwrite:
            remove_outputs(output_dir, outputs, plan=doomed)
            return Taken(mine, None, None)
        if resume:
            return Taken(mine, *set_aside(output_dir))
    except BaseException:
        locks.release(output_dir, mine.token)
        raise
    return Taken(mine, None, None)


def check_writable(output_dir: str) -> None:
    """UsageError unless ``output_dir`` is a folder, or can be made one, that this process can
    write in: found out before the model loads, by making and removing an empty folder in
    the nearest folder that exists (nothing is left behind). Local only."""
    if not _local(output_dir):
        return
    existing = output_dir
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "a link to nothing" if os.path.islink(existing) else "a file"
        raise UsageError(
            f"--output_dir {output_dir}: {existing} is {what}, not a folder: "
            f"pass a folder path (it is created if missing)"
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=existing))
    except OSError as e:
        raise UsageError(
            f"--output_dir {output_dir}: cannot create or write a folder in {existing} "
            f"({e.strerror or e}): choose a folder you can write to"
        ) from None


def refuse_links(output_dir: str, outputs: tuple[str, ...] = OUTPUTS) -> None:
    """UsageError naming the first symbolic link among the run folder's parts (a contract
    folder or file, or anything inside one): nothing is ever written, read back or deleted
    through a link. A FIFO, socket or device there is refused too (reading one blocks or
    never ends). The folder itself may be a link (it is resolved once). Local only: object
    stores have neither."""
    if not _local(output_dir):
        return
    for name in outputs:
        path = os.path.join(output_dir, name)
        odd = path if os.path.lexists(path) and _odd(os.lstat(path).st_mode) else None
        if odd is None and os.path.isdir(path) and not os.path.islink(path):
            odd = _first_odd(path)
        if odd is None:
            continue
        where = os.path.relpath(odd, output_dir)
        if os.path.islink(odd):
            raise UsageError(
                f"--output_dir {output_dir}: {where} is a symbolic link (to "
                f"{os.readlink(odd)}): a run folder's parts are never links and nothing is "
                f"written or deleted through one; remove the link or choose another --output_dir"
            )
        raise UsageError(
            f"--output_dir {output_dir}: {where} is not a regular file nor a folder (a FIFO, "
            f"socket or device): a run never writes one; remove it or choose another "
            f"--output_dir"
        )


def _odd(mode: int) -> bool:
    """Neither a regular file nor a folder: a link, FIFO, socket or device."""
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _first_odd(folder: str) -> str | None:
    """The first entry under ``folder`` that is neither a regular file nor a folder, walked
    without following any link."""
    pending = [folder]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                    return entry.path
    return None


def _plain(name) -> bool:
    """A file name with no folder part: not empty, '.', '..' nor absolute, no separator."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in _NOT_IN_NAMES)
    )


def removable(output_dir: str, outputs: tuple[str, ...] = OUTPUTS) -> list[str]:
    """--overwrite's plan, made before anything is deleted: the files the old manifest lists
    (each under a contract folder, by a plain name), then the contract's folders and files,
    the manifest last (until then the folder still shows it is a run folder). UsageError,
    naming the entry, for a manifest this tool did not write or one listing anything else:
    nothing is deleted then."""
    path = join(output_dir, MANIFEST)
    listed = []
    if MANIFEST in outputs and exists(path):
        try:
            record = read_manifest(output_dir)
        except RunFolderError as e:
            raise UsageError(f"--overwrite: {e}; nothing was deleted") from None
        if not isinstance(record.get("run_id"), str):
            raise UsageError(
                f"--overwrite: {path} names no run_id: it was not written by "
                f"`python -m pipeline`; nothing was deleted, choose another --output_dir"
            )
        files = record.get("files") or {}
        if not isinstance(files, dict):
            raise UsageError(
                f"--overwrite: {path}: 'files' is not a mapping of folder to names; "
                f"nothing was deleted"
            )
        for folder, names in files.items():
            if folder not in CONTRACT_FOLDERS:
                raise UsageError(
                    f"--overwrite: {path} lists files under {folder!r}, not a folder of a "
                    f"run ({', '.join(CONTRACT_FOLDERS)}): nothing was deleted; remove "
                    f"the folder yourself or choose another --output_dir"
                )
            bad = (
                [names]
                if not isinstance(names, (list, dict))
                else [n for n in names if not _plain(n)]  # a dict's names are its keys
            )
            if bad:
                raise UsageError(
                    f"--overwrite: {path} lists {bad[0]!r} under {folder!r}, not a plain "
                    f"file name: nothing was deleted; remove the folder yourself or choose "
                    f"another --output_dir"
                )
            listed.extend(join(output_dir, folder, name) for name in names)
    paths = [
        *listed,
        *(join(output_dir, n) for n in outputs if n != MANIFEST),
        *([path] if MANIFEST in outputs else []),
    ]
    for p in paths:
        _check_inside(output_dir, p)
        _check_deletable(p)
    return paths


def _check_deletable(path: str) -> None:
    """UsageError unless this process may delete ``path`` (locally: its folder, and every
    folder inside it, writable): a plan that would stop half way is refused whole."""
    if not _local(path) or not os.path.lexists(path):
        return
    folders = [os.path.dirname(path)]
    if os.path.isdir(path) and not os.path.islink(path):
        folders += [where for where, _, _ in os.walk(path)]
    for folder in folders:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(
                f"--overwrite: cannot delete {path} ({folder} is not writable for this "
                f"user): nothing was deleted; fix the permission or choose another --output_dir"
            )


def within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or below it, both resolved locally (symbolic links,
    ``..``); on object stores compared as written."""
    if _local(path) and _local(folder):
        root, where = os.path.realpath(folder), os.path.realpath(path)
        return where == root or where.startswith(root.rstrip(os.sep) + os.sep)
    root, where = folder.rstrip("/"), path.rstrip("/")
    return ".." not in where.split("/") and (where == root or where.startswith(root + "/"))


def _check_inside(output_dir: str, path: str, done: str = "nothing was deleted") -> None:
    """UsageError unless ``path``'s folder, resolved, is ``output_dir`` or below it."""
    if _local(path):
        inside = within(os.path.dirname(path), output_dir)
    else:
        inside = path.startswith(output_dir.rstrip("/") + "/") and ".." not in path.split("/")
    if not inside:
        raise UsageError(f"--overwrite: {path} is outside --output_dir {output_dir}: {done}")


def delete_tree(path: str) -> None:
    """Delete a file or a folder with all it holds; a link is removed itself, never followed
    (locally; object stores have no links)."""
    if _local(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)  # removes links inside, never follows them
        elif os.path.lexists(path):
            os.remove(path)
        return
    found = [m.path for m in FileSystems.match([f"{path.rstrip('/')}/**"])[0].metadata_list]
    if exists(path):
        found.append(path)
    if found:
        FileSystems.delete(found)


def remove_outputs(
    output_dir: str, outputs: tuple[str, ...] = OUTPUTS, *, plan: list[str] | None = None
) -> None:
    """--overwrite: delete what an earlier run wrote (``outputs``), as ``removable`` planned
    it (planned here when not given), nothing else."""
    for path in removable(output_dir, outputs) if plan is None else plan:
        # checked again as it goes: a folder swapped for a link since the plan stops it
        _check_inside(output_dir, path, "the overwrite stopped there")
        try:
            delete_tree(path)
        except OSError as e:  # changed since the plan: one line, the lock is released
            raise UsageError(
                f"--overwrite: cannot delete {path} ({e.strerror}): the overwrite stopped there"
            ) from None


def remove_temporaries(output_dir: str) -> None:
    """Delete leftovers of writes that died between create and rename (a killed worker)."""
    for folder in (*ARTIFACT_FOLDERS, None):
        delete_matching(join(output_dir, *([folder] if folder else []), f"{TEMPORARY_PREFIX}*"))


def make_dirs(path: str) -> None:
    if "://" not in path:
        os.makedirs(path, exist_ok=True)


def _parquet(folder: str) -> list[str]:
    """The published parts in ``folder``: not a write a killed worker left half done."""
    return [
        m.path
        for m in FileSystems.match([f"{folder}/*.parquet"])[0].metadata_list
        if not m.path.rsplit("/", 1)[-1].startswith(TEMPORARY_PREFIX)
    ]


def set_aside(output_dir: str) -> tuple[str | None, list[str] | None]:
    """--resume: move every summaries part an earlier attempt published (staged or already
    committed) to ``.staging/previous/summaries/`` to be reused, and drop what is redone
    (errors, manifest, report, model-load marks, temporaries). Masks and overlays stay: the
    reused rows point at them."""
    _check_committed_parts(output_dir)
    target = join(previous_dir(output_dir), SUMMARIES)
    make_dirs(target)
    for source in _parquet(join(output_dir, SUMMARIES)) + _parquet(
        parts_dir(output_dir, SUMMARIES)
    ):
        if _readable(source):
            FileSystems.rename([source], [f"{target}/{uuid.uuid4().hex}.parquet"])
        else:  # published whole, so damaged since: its images are computed again
            logging.warning(
                "--resume: %s is not readable Parquet; its rows are computed again", source
            )
            FileSystems.delete([source])
    for path in (
        join(output_dir, SUMMARIES),
        join(output_dir, ERRORS),
        parts_dir(output_dir, ERRORS),
        join(output_dir, STRATEGIES),  # clustered again over all rows, reused ones too
        parts_dir(output_dir, STRATEGIES),
        loads_dir(output_dir),
        join(output_dir, MANIFEST),
        join(output_dir, REPORT),
    ):
        delete_tree(path)
    remove_temporaries(output_dir)
    listed = read_list(output_dir) if exists(inputs_path(output_dir)) else None
    return (previous_dir(output_dir) if _parquet(target) else None), listed


def _check_committed_parts(output_dir: str) -> None:
    """--resume of a folder whose run committed: its summaries must match the sizes and
    sha256 its manifest lists (UsageError naming the file), before anything is moved."""
    try:
        record = read_manifest(output_dir)
    except RunFolderError:
        return  # an interrupted attempt: nothing was committed, no digests to check
    try:
        check_digests(output_dir, record, "--resume")
    except PreviousRunError as e:
        raise UsageError(str(e)) from None


def _readable(path: str) -> bool:
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            _ = pq.ParquetFile(f).schema_arrow
        return True
    except Exception:  # noqa: BLE001 - any damage: not reusable
        return False


ATTEMPT_KEY = b"attempt"  # the list's Parquet metadata: what defines the run (see run.py)


def write_list(output_dir: str, uris: list[str], definition: dict | None = None) -> str:
    """The run's inputs, listed once: the job reads this file instead of matching again. The
    options that define the run (``definition``) are stored in the same file, so the list
    and what it was matched for are published together."""
    path = inputs_path(output_dir)
    make_dirs(staging_dir(output_dir))
    table = pa.table({"uri": pa.array(uris, pa.string())})
    if definition is not None:
        table = table.replace_schema_metadata({ATTEMPT_KEY: json.dumps(definition).encode()})
    publish_table(path, table)
    return path


def read_list(output_dir: str) -> list[str] | None:
    try:
        with FileSystems.open(inputs_path(output_dir), compression_type="uncompressed") as f:
            return pq.read_table(f, columns=["uri"]).column("uri").to_pylist()
    except Exception:  # noqa: BLE001 - a list cut short by the crash: match again
        return None


def read_definition(output_dir: str) -> dict | None:
    """What defines the interrupted attempt (``write_list``'s ``definition``): None when its
    list is absent or cut short (the run is matched afresh), ``{}`` when the list was written
    without one (by an older version)."""
    try:
        with FileSystems.open(inputs_path(output_dir), compression_type="uncompressed") as f:
            metadata = pq.read_schema(f).metadata or {}
    except Exception:  # noqa: BLE001 - as read_list: nothing to compare with
        return None
    try:
        found = json.loads(metadata.get(ATTEMPT_KEY, b"{}").decode("utf-8"))
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
