"""Run-folder file I/O through Beam's FileSystems (local paths and ``gs://`` alike).

One home for what the job, the report, the comparison and ``--reuse_from`` all do with a run
folder: publish a file by rename, read ``manifest.json`` (one error rule: ``RunFolderError``
with a one-line message), list and read the Parquet parts of ``summaries/`` or ``errors/``.
No TensorFlow is imported here, so the report and the comparison start without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from attribution.hashing import CHUNK_BYTES

TEMPORARY_PREFIX = ".tmp-"
MANIFEST = "manifest.json"


class RunFolderError(ValueError):
    """A folder that is not a readable finished run; the message is one line that says what
    is wrong and what to pass instead."""


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def absolute(path: str) -> str:
    """Local paths absolute (uris in the outputs resolve from anywhere), remote ones as given,
    both without a trailing slash."""
    return path.rstrip("/") if "://" in path else os.path.abspath(path)


class OutputWriteError(OSError):
    """A write of a run's outputs failed (disk full, permission, ...); the message is one line
    ``cannot write FILE: reason``."""


WRITE_ERROR = "cannot write"


def publish(path: str, data: bytes) -> None:
    """Write to a temporary name beside ``path``, then rename: readers never see half a
    file, and a retried bundle overwrites the same name instead of leaving a duplicate. A
    failed write leaves nothing (the temporary file is deleted) and raises OutputWriteError
    naming ``path``."""
    directory, name = path.rsplit("/", 1)
    temporary = f"{directory}/{TEMPORARY_PREFIX}{uuid.uuid4().hex}-{name}"
    try:
        with FileSystems.create(temporary) as f:
            f.write(data)
        FileSystems.rename([temporary], [path])
    except Exception as e:  # noqa: BLE001 - any storage failure: clean up, name the file
        try:
            if FileSystems.exists(temporary):
                FileSystems.delete([temporary])
        except Exception:  # noqa: BLE001, S110 - the original error is the one to report
            pass
        reason = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise OutputWriteError(f"{WRITE_ERROR} {path}: {reason}") from None


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read()


def delete_matching(pattern: str) -> int:
    """Delete every file matching ``pattern``; how many there were."""
    stale = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    if stale:
        FileSystems.delete(stale)
    return len(stale)


def read_manifest(folder: str) -> dict:
    """``folder/manifest.json`` as a dict; RunFolderError when it is missing, unreadable, not
    JSON or not a JSON object."""
    folder = folder.rstrip("/")
    path = f"{folder}/{MANIFEST}"
    try:
        if not exists(path):
            raise RunFolderError(
                f"{path} not found: {folder} is not the output folder of a "
                f"finished `python -m pipeline` run"
            )
        manifest = json.loads(read_bytes(path).decode("utf-8"))
    except RunFolderError:
        raise
    except Exception as e:  # noqa: BLE001 - any storage or decoding failure: unreadable
        raise RunFolderError(
            f"{path} cannot be read as JSON ({_one_line(e)}): pass the "
            f"output folder of a finished run"
        ) from None
    if not isinstance(manifest, dict):
        raise RunFolderError(
            f"{path} must hold a JSON object, got {type(manifest).__name__}: "
            f"it was not written by `python -m pipeline`"
        )
    return manifest


def parquet_parts(folder: str, kind: str) -> list[str]:
    """The Parquet files of ``folder/kind`` (``summaries``, ``errors``, ...), sorted."""
    pattern = f"{folder.rstrip('/')}/{kind}/*.parquet"
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def _unreadable(path: str, error: BaseException) -> RunFolderError:
    return RunFolderError(
        f"{path} cannot be read as Parquet ({_one_line(error)}): the run "
        f"folder is damaged; rerun it"
    )


def parquet_schema(path: str) -> pa.Schema:
    """The schema of one Parquet file (its footer only)."""
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            return pq.read_schema(f)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise _unreadable(path, e) from None


def parquet_batches(path: str, columns: list[str], batch_size: int):
    """Record batches of ``columns`` of one Parquet file, streamed."""
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise _unreadable(path, e) from None


def read_parquet(folder: str, kind: str, columns: list[str] | None = None) -> pa.Table:
    """Every Parquet file of ``folder/kind`` as one table (empty without files)."""
    tables = []
    for path in parquet_parts(folder, kind):
        try:
            with FileSystems.open(path, compression_type="uncompressed") as f:
                tables.append(pq.read_table(f, columns=columns))
        except (OSError, ValueError, pa.ArrowException) as e:
            raise _unreadable(path, e) from None
    return pa.concat_tables(tables) if tables else pa.table({})


# Digests of a run's data files: manifest.json lists each part as {name: {size, sha256}}.
def file_digest(path: str) -> dict:
    """``{"size": bytes, "sha256": hex}`` of one file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with FileSystems.open(path, compression_type="uncompressed") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def verify_parts(folder: str, manifest: dict, kinds=("summaries",)) -> bool:
    """Check the Parquet parts of ``folder/<kind>`` against ``manifest["files"]``: every part
    on disk is listed, every listed part is there with its size and sha256. RunFolderError
    names the first file that does not match. Returns False when the manifest lists plain
    names or no ``files`` (an older run): those parts cannot be verified (the caller says
    so)."""
    folder = folder.rstrip("/")
    files = manifest.get("files")
    if files is None:  # a manifest from before `files` was written
        return False
    if not isinstance(files, dict):
        raise RunFolderError(f"{folder}/{MANIFEST}: `files` is not a mapping of folders")
    verifiable = True
    for kind in kinds:
        listed = files.get(kind)
        if listed is None:
            listed = {}
        if not isinstance(listed, (dict, list)):
            raise RunFolderError(f"{folder}/{MANIFEST}: `files.{kind}` is not a list of parts")
        on_disk = {path.rsplit("/", 1)[-1]: path for path in parquet_parts(folder, kind)}
        for name in sorted(on_disk):
            if name not in listed:
                raise RunFolderError(
                    f"{on_disk[name]} is not listed in {folder}/{MANIFEST}: the folder was "
                    f"changed after its run; rerun it"
                )
        for name in sorted(listed):
            path = f"{folder}/{kind}/{name}"
            if name not in on_disk:
                raise RunFolderError(
                    f"{path} is listed in {folder}/{MANIFEST} but missing: the folder is "
                    f"damaged; rerun it"
                )
            expected = listed[name] if isinstance(listed, dict) else None
            if not isinstance(expected, dict):
                verifiable = False
                continue
            found = file_digest(path)
            for key in ("size", "sha256"):
                if found[key] != expected.get(key):
                    raise RunFolderError(
                        f"{path} does not match {folder}/{MANIFEST} ({key} "
                        f"{found[key]}, listed {expected.get(key)}): the file was changed "
                        f"or damaged after its run; rerun it"
                    )
    return verifiable


def run_file_path(roots: list[str], folder: str, uri: str) -> str:
    """The file a row's ``uri`` names, looked up by its plain name in ``<root>/<folder>/`` of
    one of ``roots``: the root whose folder the uri's directory resolves to first, then the
    others in order (a run folder copied or moved keeps its rows' old absolute uris). The
    stored directory is never followed, so a row can only name a file of those folders;
    RunFolderError when there is none (``<folder>`` itself must not be a symbolic link)."""
    if not isinstance(uri, str) or not uri:
        raise RunFolderError("no file named")
    directory, _, name = uri.rstrip("/").rpartition("/")
    if name in ("", ".", "..") or "\\" in name:
        raise RunFolderError(f"{uri!r} does not end in a file name")
    candidates = []
    for root in roots:
        root = root.rstrip("/")
        expected = f"{root}/{folder}"
        if "://" not in root:
            if os.path.islink(expected) or not os.path.isdir(expected):
                continue
            same = bool(directory) and os.path.realpath(directory) == os.path.realpath(expected)
        else:
            same = directory == expected
        candidates.insert(0 if same else len(candidates), f"{expected}/{name}")
    for path in candidates:
        if exists(path) or os.path.lexists(path):
            return path
    raise RunFolderError(f"no {folder}/{name} in {' or '.join(roots)} (the row names {uri})")


def read_run_file(roots: list[str], folder: str, uri: str, max_bytes: int) -> bytes:
    """The bytes of a mask, overlay or raw file named by a row, read only from inside
    ``<root>/<folder>/`` (``run_file_path``), only a regular file that is not a symbolic link,
    at most ``max_bytes``. RunFolderError says why not (a missing file too); other storage
    errors propagate."""
    path = run_file_path(roots, folder, uri)
    if "://" in path:
        found = FileSystems.match([path])[0].metadata_list
        if not found:
            raise RunFolderError(f"{path} is gone")
        if found[0].size_in_bytes > max_bytes:
            raise RunFolderError(f"{path} is larger than {max_bytes} bytes")
        return read_bytes(path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise RunFolderError(f"{path} is gone") from None
    except OSError as e:  # ELOOP: a symbolic link
        raise RunFolderError(f"{path} cannot be opened as a plain file ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise RunFolderError(f"{path} is not a regular file")
        if info.st_size > max_bytes:
            raise RunFolderError(f"{path} is larger than {max_bytes} bytes")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RunFolderError(f"{path} is larger than {max_bytes} bytes")
    return data
