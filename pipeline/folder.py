"""Take the run folder before any work: refuse a folder in use or holding another run's
outputs, take the lock, and clear (``--overwrite``) or set aside (``--resume``) what an
earlier run left. The folder's life cycle is in README ("The run folder's life cycle")."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import lock as locks
from pipeline.launch import UsageError
from transforms.files import (
    TEMPORARY_PREFIX,
    RunFolderError,
    delete_matching,
    exists,
    publish,
    read_manifest,
)
from transforms.reuse import PreviousRunError, check_digests
from transforms.staging import STAGING, inputs_path, join, parts_dir, previous_dir, staging_dir

# Everything a run writes into its folder (besides the lock).
OUTPUTS = (
    "summaries",
    "errors",
    "strategies",
    "masks",
    "overlays",
    "raw",
    "manifest.json",
    "report.html",
    STAGING,
)


@dataclass(frozen=True)
class Taken:
    lock: locks.Lock
    resume_parts: str | None  # a folder whose summaries/ hold an interrupted attempt's rows
    listed: list[str] | None  # the interrupted attempt's input list, kept by --resume


def present_outputs(output_dir: str, outputs: tuple[str, ...] = OUTPUTS) -> list[str]:
    """Which of ``outputs`` (a run folder's, or another folder kind's, e.g. the sanity
    check's) the folder holds."""
    return [name for name in outputs if exists(join(output_dir, name))]


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
    """Lock ``output_dir`` for this run, or UsageError saying why not and what to do.
    ``outputs``: the names this kind of folder holds (a run's by default)."""
    owner = locks.read(output_dir)
    if owner is not None:
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
            )
    present = present_outputs(output_dir, outputs)
    if present and not (resume or overwrite):
        raise UsageError(
            f"--output_dir {output_dir} holds another run's outputs "
            f"({', '.join(present)}): pass --overwrite to replace them, --resume "
            f"to finish an interrupted run, or choose another folder"
        )
    mine = locks.Lock.new(run_id, local)
    if owner is not None:
        locks.remove_stale(output_dir)
    try:
        locks.create(output_dir, mine)
    except locks.LockHeld as e:
        raise UsageError(f"--output_dir {output_dir} is in use: {e}") from None
    try:
        if overwrite:
            remove_outputs(output_dir, outputs)
            return Taken(mine, None, None)
        if resume:
            return Taken(mine, *set_aside(output_dir))
    except Exception:
        locks.release(output_dir, mine.token)
        raise
    return Taken(mine, None, None)


def delete_tree(path: str) -> None:
    if "://" not in path:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        return
    found = [m.path for m in FileSystems.match([f"{path.rstrip('/')}/**"])[0].metadata_list]
    if exists(path):
        found.append(path)
    if found:
        FileSystems.delete(found)


def _listed_in_manifest(output_dir: str) -> list[str]:
    try:
        with FileSystems.open(join(output_dir, "manifest.json")) as f:
            files = json.loads(f.read().decode("utf-8")).get("files") or {}
        return [
            join(output_dir, folder, name)
            for folder, names in files.items()
            for name in names
            if "/" not in name and name not in ("", ".", "..")
        ]
    except Exception:  # noqa: BLE001 - no usable manifest: the contract's folders suffice
        return []


def remove_outputs(output_dir: str, outputs: tuple[str, ...] = OUTPUTS) -> None:
    """--overwrite: delete what an earlier run wrote (the files its manifest lists, and the
    contract's folders and files, ``outputs``), nothing else."""
    listed = [p for p in _listed_in_manifest(output_dir) if exists(p)]
    if listed:
        FileSystems.delete(listed)
    for name in outputs:
        delete_tree(join(output_dir, name))


def remove_temporaries(output_dir: str) -> None:
    """Delete leftovers of writes that died between create and rename (a killed worker)."""
    for folder in ("masks", "overlays", "raw", None):
        delete_matching(join(output_dir, *([folder] if folder else []), f"{TEMPORARY_PREFIX}*"))


def make_dirs(path: str) -> None:
    if "://" not in path:
        os.makedirs(path, exist_ok=True)


def _parquet(folder: str) -> list[str]:
    return [m.path for m in FileSystems.match([f"{folder}/*.parquet"])[0].metadata_list]


def set_aside(output_dir: str) -> tuple[str | None, list[str] | None]:
    """--resume: move every summaries part an earlier attempt published (staged or already
    committed) to ``.staging/previous/summaries/`` to be reused, and drop what is redone
    (errors, manifest, report, model-load marks, temporaries). Masks and overlays stay: the
    reused rows point at them."""
    _check_committed_parts(output_dir)
    target = join(previous_dir(output_dir), "summaries")
    make_dirs(target)
    for source in _parquet(join(output_dir, "summaries")) + _parquet(
        parts_dir(output_dir, "summaries")
    ):
        if _readable(source):
            FileSystems.rename([source], [f"{target}/{uuid.uuid4().hex}.parquet"])
        else:  # published whole, so damaged since: its images are computed again
            logging.warning(
                "--resume: %s is not readable Parquet; its rows are computed again", source
            )
            FileSystems.delete([source])
    for path in (
        join(output_dir, "summaries"),
        join(output_dir, "errors"),
        parts_dir(output_dir, "errors"),
        join(output_dir, "strategies"),  # recomputed from every row (issue 21)
        parts_dir(output_dir, "strategies"),
        parts_dir(output_dir, "model_loads"),
        join(output_dir, "manifest.json"),
        join(output_dir, "report.html"),
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
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    publish(path, sink.getvalue().to_pybytes())
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
