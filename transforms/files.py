"""Run-folder file I/O through Beam's FileSystems (local paths and ``gs://`` alike).

One home for what the job, the report, the comparison and ``--reuse_from`` all do with a run
folder: publish a file by rename, read ``manifest.json`` (one error rule: ``RunFolderError``
with a one-line message), list and read the Parquet parts of ``summaries/`` or ``errors/``,
read a row's mask, overlay or raw file, count a model load. Where each of those lives in the
folder is ``transforms/layout.py``'s to say. No TensorFlow is imported here, so the report and
the comparison start without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import stat
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from attribution.hashing import CHUNK_BYTES
from transforms.layout import (
    ARTIFACT_FOLDERS,
    ERRORS,
    MANIFEST,
    MASKS,
    OVERLAYS,
    RAW,
    SUMMARIES,
    TEMPORARY_PREFIX,
    join,
    loads_dir,
)


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


def json_bytes(value) -> bytes:
    """``value`` as strict JSON (RFC 8259: what jq, JavaScript and BigQuery read), indented
    with sorted keys: a float that is not finite (``--lock_timeout inf``, a NaN measure) is
    written as the string "inf", "-inf" or "nan" where ``json.dumps`` writes the bare
    ``Infinity`` / ``NaN`` those readers refuse; other values it cannot encode as ``str``."""
    return json.dumps(
        _finite(value), indent=2, sort_keys=True, default=str, allow_nan=False
    ).encode("utf-8")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def publish_table(path: str, table: pa.Table) -> None:
    """``table`` as one Parquet file (snappy-compressed, pyarrow's default), published whole
    at ``path`` (``publish``): the job's parts, the input list, the sanity check's table."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    publish(path, sink.getvalue().to_pybytes())


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def open_read(path: str):
    """A run-folder file opened for reading: locally only a regular file (links followed),
    opened without blocking, so a FIFO or a device named like a part or a manifest is an
    OSError, never a reader waiting forever; elsewhere as Beam opens it."""
    if "://" in path:
        return FileSystems.open(path, compression_type="uncompressed")
    f = os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise OSError(f"{path} is not a regular file")
    return f


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def mark_model_load(output_dir: str) -> None:
    """Count one model load for the manifest (the commit counts the files in
    ``layout.loads_dir``): a job launched without a waiting launcher has no other way to
    report it."""
    try:
        with FileSystems.create(join(loads_dir(output_dir), uuid.uuid4().hex)) as f:
            f.write(b"1")  # not empty: a run folder never holds 0-byte files
    except Exception:  # noqa: BLE001 - a metric, never a reason to fail the bundle
        logging.debug("could not count a model load in %s", output_dir, exc_info=True)


# A row's files (layout.ARTIFACT_FOLDERS) are read back only from their folder, and only if
# they start as their kind does.
MAX_ARTIFACT_BYTES = 64 * 1024 * 1024  # a mask, overlay or raw .npy is far smaller
PNG, NPY = b"\x89PNG\r\n\x1a\n", b"\x93NUMPY"
SIGNATURES = {MASKS: PNG, OVERLAYS: PNG, RAW: NPY}


class NotRead(Exception):
    """A file the data names that is not read; the message is the one-line reason."""


def artifact_path(output_dir: str, folder: str, uri: str | None) -> str:
    """Where a row's recorded ``uri`` (mask_uri, overlay_uri, raw_uri) is read from: always
    ``output_dir/folder/<its file name>`` (so a moved run folder still finds its files),
    and only if the uri names a file in a ``folder/`` folder; NotRead otherwise."""
    if folder not in ARTIFACT_FOLDERS:
        raise NotRead(f"{folder!r} is not one of the run's artifact folders")
    if not uri:
        raise NotRead("no file recorded")
    parts = uri.split("/")
    name = parts[-1]
    if len(parts) < 2 or parts[-2] != folder or name in ("", ".", "..") or "\x00" in uri:
        raise NotRead(f"{uri} is not a file in a {folder}/ folder of a run: not read")
    return join(output_dir, folder, name)


def _read_local_artifact(path: str, max_bytes: int) -> bytes:
    """A regular file, no symbolic link on the way from the run folder, opened without
    blocking and read up to ``max_bytes``."""
    folder = os.path.dirname(path)
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            raise NotRead(f"{folder} is not a folder (a symbolic link?): not read")
        info = os.lstat(path)
    except FileNotFoundError:
        raise NotRead(f"{path} does not exist") from None
    except OSError as e:
        raise NotRead(f"{path} cannot be looked at ({e.strerror})") from None
    if stat.S_ISLNK(info.st_mode):
        raise NotRead(f"{path} is a symbolic link: not read")
    if not stat.S_ISREG(info.st_mode):
        raise NotRead(f"{path} is not a regular file: not read")
    if info.st_size > max_bytes:
        raise NotRead(f"{path} has {info.st_size} bytes, more than {max_bytes}: not read")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise NotRead(f"{path} cannot be opened ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino) or not stat.S_ISREG(now.st_mode):
            raise NotRead(f"{path} was replaced while being read: not read")
        return f.read(max_bytes + 1)


def read_artifact(
    output_dir: str, folder: str, uri: str | None, max_bytes: int = MAX_ARTIFACT_BYTES
) -> bytes:
    """The bytes of a row's mask, overlay or raw file, read only from inside ``output_dir``
    (``artifact_path``): a regular file (locally: not a symbolic link, nor in a linked
    folder; a FIFO or a device is never opened for reading), at most ``max_bytes``, starting
    as its kind does (PNG, .npy). NotRead says why not, in one line."""
    path = artifact_path(output_dir, folder, uri)
    if "://" not in path:
        data = _read_local_artifact(path, max_bytes)
    else:
        found = FileSystems.match([path])[0].metadata_list
        if not found:
            raise NotRead(f"{path} does not exist")
        if found[0].size_in_bytes > max_bytes:
            raise NotRead(f"{path} has {found[0].size_in_bytes} bytes, more than {max_bytes}")
        with open_read(path) as f:
            data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise NotRead(f"{path} has more than {max_bytes} bytes: not read")
    if not data.startswith(SIGNATURES[folder]):
        raise NotRead(f"{path} is not {_kind(folder)}: not shown")
    return data


def _kind(folder: str) -> str:
    """What a file of an artifact folder must be (its SIGNATURES' start says so)."""
    return "a .npy array" if folder == RAW else "a PNG"


def delete_matching(pattern: str) -> int:
    """Delete every file matching ``pattern``; how many there were."""
    stale = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    if stale:
        FileSystems.delete(stale)
    return len(stale)


# a manifest is a few KB (plus ~150 bytes a listed part); a larger file is read no further
# (a 3 GB sparse manifest.json took 6.5 GB of memory to refuse)
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


def read_manifest(folder: str) -> dict:
    """``folder/manifest.json`` as a dict; RunFolderError when it is missing, unreadable, not
    JSON or not a JSON object."""
    folder = folder.rstrip("/")
    path = join(folder, MANIFEST)
    try:
        if not exists(path):
            raise RunFolderError(
                f"{path} not found: {folder} is not the output folder of a "
                f"finished `python -m pipeline` run"
            )
        with open_read(path) as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise RunFolderError(
                f"{path} is larger than {MAX_MANIFEST_BYTES} bytes, which no manifest of "
                f"`python -m pipeline` is: pass the output folder of a finished run"
            )
        manifest = json.loads(data.decode("utf-8"))
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
    check_manifest(path, manifest)
    return manifest


# What readers use of a manifest, and the JSON type each must have when present (null is
# always allowed: older runs lack keys; keys not listed are not checked). One rule for every
# reader: a manifest that breaks it is no run's record.
NUMBER, COUNT, TEXT, OBJECT, FLAG, SIZE = (
    "a number",
    "a whole number >= 0",
    "a string",
    "an object",
    "true or false",
    "a list of two whole numbers > 0",
)
MANIFEST_FIELDS = {
    "counts": OBJECT,
    **{f"counts.{k}": COUNT for k in ("matched", "attributed", "failed", "rows", "missing")},
    "counts.in_both": COUNT,
    "metrics": OBJECT,
    "metrics.model_loads": COUNT,
    "config": OBJECT,
    "model": OBJECT,
    "versions": OBJECT,
    "complete": FLAG,
    "started_at": TEXT,
    "finished_at": TEXT,
    "run_id": TEXT,
    "settings_hash": TEXT,
    "model.handle": TEXT,
    "model.kind": TEXT,
    "model.fingerprint": TEXT,
    "model.num_classes": COUNT,
    "model.output": TEXT,
    "model.input_size": SIZE,
    "config.input_pattern": TEXT,
    "config.input_format": TEXT,
    "config.image_key": TEXT,
    "config.id_key": TEXT,
    "config.attribution": TEXT,
    "config.method": TEXT,
    "config.baseline": TEXT,
    "config.score": TEXT,
    "config.steps": COUNT,
    "config.max_steps": COUNT,
    "config.tolerance": NUMBER,
    "config.grid_cells": COUNT,
    "config.batch_size": COUNT,
    "config.max_pixels": COUNT,
    "config.max_file_bytes": COUNT,
    "config.max_blur_sigma": NUMBER,
    "config.deletion_fill": TEXT,
    "config.mufidelity_subsets": COUNT,
    "config.mufidelity_fraction": NUMBER,
    "config.resolved_image_size": SIZE,
}


def _is(value, kind: str) -> bool:
    whole = isinstance(value, int) and not isinstance(value, bool)
    if kind == NUMBER:
        return whole or (isinstance(value, float) and value == value)
    if kind == COUNT:
        return whole and value >= 0
    if kind == SIZE:
        return (
            isinstance(value, list)
            and len(value) == 2
            and all(_is(v, COUNT) and v > 0 for v in value)
        )
    return isinstance(value, {TEXT: str, OBJECT: dict, FLAG: bool}[kind])


def check_manifest(path: str, manifest: dict) -> None:
    """RunFolderError naming the first key of ``MANIFEST_FIELDS`` whose value has the wrong
    type (readers then never meet a string where they count, or a list where they format)."""
    for key, kind in MANIFEST_FIELDS.items():
        parent, _, name = key.rpartition(".")
        holder = manifest.get(parent) if parent else manifest
        value = holder.get(name) if isinstance(holder, dict) else None  # parents come first
        if value is not None and not _is(value, kind):
            shown = " ".join(json.dumps(value, default=str).split())
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise RunFolderError(
                f"{path}: `{key}` must be {kind}, got {shown}: it was not written by "
                f"`python -m pipeline`; rerun the run"
            )


def _family(kind: pa.DataType):
    """What a reader can rely on of an Arrow type, whatever its width."""
    if pa.types.is_null(kind):
        return None  # a column of nulls fits any type
    if pa.types.is_integer(kind):
        return "integer"
    if pa.types.is_floating(kind):
        return "number"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return ("list", kind.value_type)
    if pa.types.is_struct(kind):
        return ("struct", kind)
    return str(kind)


def _fits(found: pa.DataType, expected: pa.DataType) -> bool:
    f, e = _family(found), _family(expected)
    if f is None or e is None or (f, e) == ("integer", "number"):  # whole numbers are numbers
        return True
    if isinstance(f, tuple) and isinstance(e, tuple) and f[0] == e[0]:
        if f[0] == "list":
            return _fits(f[1], e[1])
        known = {field.name: field.type for field in e[1]}
        return all(_fits(field.type, known[field.name]) for field in f[1] if field.name in known)
    return f == e


def contract_schema(path: str) -> pa.Schema | None:
    """The contract's schema of a part under ``summaries/`` or ``errors/``, else None."""
    from transforms.write import ERROR_SCHEMA, SUMMARY_SCHEMA  # it imports this module

    folder = path.rsplit("/", 2)[-2] if path.count("/") >= 1 else ""
    return {SUMMARIES: SUMMARY_SCHEMA, ERRORS: ERROR_SCHEMA}.get(folder)


def check_part(path: str, schema: pa.Schema) -> pa.Schema:
    """``schema`` if every column the contract names has the contract's kind of type
    (numbers, strings, lists of..., structs of...), else RunFolderError naming the column."""
    expected = contract_schema(path)
    for field in schema if expected is not None else ():
        index = expected.get_field_index(field.name)
        if index >= 0 and not _fits(field.type, expected.field(index).type):
            raise RunFolderError(
                f"{path}: column `{field.name}` is {field.type}, the contract says "
                f"{expected.field(index).type}: it was not written by `python -m pipeline`; "
                f"rerun the run"
            )
    return schema


BATCH_ROWS = 65_536  # rows per record batch a reader streams: memory bounded at any part size


def parquet_parts(folder: str, kind: str) -> list[str]:
    """The Parquet files of ``folder/kind`` (``summaries``, ``errors``, ...), sorted."""
    pattern = join(folder, kind, "*.parquet")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def _unreadable(path: str, error: BaseException) -> RunFolderError:
    return RunFolderError(
        f"{path} cannot be read as Parquet ({_one_line(error)}): the run "
        f"folder is damaged; rerun it"
    )


def parquet_schema(path: str) -> pa.Schema:
    """The schema of one Parquet file (its footer only)."""
    try:
        with open_read(path) as f:
            schema = pq.read_schema(f)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise _unreadable(path, e) from None
    return check_part(path, schema)


def parquet_batches(path: str, columns: list[str], batch_size: int = BATCH_ROWS):
    """Record batches of ``columns`` of one Parquet file, streamed."""
    try:
        with open_read(path) as f:
            part = pq.ParquetFile(f)
            check_part(path, part.schema_arrow)
            yield from part.iter_batches(batch_size=batch_size, columns=columns)
    except (OSError, ValueError, pa.ArrowException) as e:
        if isinstance(e, RunFolderError):
            raise

        raise _unreadable(path, e) from None


def read_parquet(folder: str, kind: str, columns: list[str] | None = None) -> pa.Table:
    """Every Parquet file of ``folder/kind`` as one table (empty without files)."""
    tables = []
    for path in parquet_parts(folder, kind):
        try:
            with open_read(path) as f:
                tables.append(pq.read_table(f, columns=columns))
        except (OSError, ValueError, pa.ArrowException) as e:
            raise _unreadable(path, e) from None
        check_part(path, tables[-1].schema)
    return pa.concat_tables(tables) if tables else pa.table({})


# Digests of a run's data files: manifest.json lists each part as {name: {size, sha256}}.
def file_digest(path: str) -> dict:
    """``{"size": bytes, "sha256": hex}`` of one file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with open_read(path) as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def verify_parts(folder: str, manifest: dict, kinds=(SUMMARIES,)) -> bool:
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
            try:
                found = file_digest(path)
            except OSError as e:  # a FIFO or a device in the part's place
                raise _unreadable(path, e) from None
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
    at most ``max_bytes``, starting as its kind does (PNG, .npy: a hard link in masks/ to
    a file outside is not copied). RunFolderError says why not (a missing file too); other
    storage errors propagate."""
    path = run_file_path(roots, folder, uri)
    data = _read_run_file(path, max_bytes)
    if not data.startswith(SIGNATURES[folder]):
        raise RunFolderError(f"{path} is not {_kind(folder)}")
    return data


def _read_run_file(path: str, max_bytes: int) -> bytes:
    """The bytes at ``path``: a regular file (not a link, never blocking), at most
    ``max_bytes``; RunFolderError otherwise."""
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
