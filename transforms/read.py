"""Read and decode every listed file; broken files go to a dead-letter output.

Reads are safe with whatever the folder holds: only regular files are opened (a FIFO, a
device, a socket or a link to one is an error row at once, never a hang), a file larger than
``max_file_bytes`` is refused from its size before it is read, and no read returns more than
that many bytes. The pixel-count guard (``--max_pixels``) then runs on the image header
before the body is decoded (attribution/images.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from attribution import hashing
from attribution.images import ImageError, decode_image, model_input
from transforms.ids import image_id
from transforms.job_config import JOB_DEFAULTS
from transforms.progress import CountsProgress
from transforms.records import ERRORS, NAMESPACE, DecodedImage, ImageRef, error_row

DEFAULT_MAX_FILE_BYTES = JOB_DEFAULTS.max_file_bytes
ANY_SIZE = 1 << 62  # open_input's limit for a file read as a stream (a TFRecord shard)


class UnsafeInput(Exception):
    """A listed path that must not be read; ``error_type`` says why."""

    def __init__(self, error_type: str, message: str):
        super().__init__(error_type, message)
        self.error_type, self.message = error_type, message

    def __str__(self) -> str:
        return self.message


# A file name that is not UTF-8 cannot be a uri (Parquet and JSON hold UTF-8 text): it is
# listed with each undecodable byte (always >= 0x80) as \\xNN, and read back from that form.
_ESCAPED_BYTE = re.compile(r"\\x([89a-f][0-9a-f])")


def listed_uri(path: str) -> str:
    """``path`` as the run lists it: as it is when it is UTF-8 text, else with the bytes
    that are not (``os.walk`` gives them as surrogates) written ``\\xNN``."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def _local_path(uri: str) -> str:
    """The local path a listed uri names: itself, or, when no such entry exists, the name
    ``listed_uri`` escaped (only bytes >= 0x80 are unescaped: never a separator)."""
    if "\\x" not in uri or os.path.lexists(uri):
        return uri
    # the surrogate U+DC80..U+DCFF is how Python's os functions name a byte 0x80..0xff
    unescaped = _ESCAPED_BYTE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), uri)
    return unescaped if os.path.lexists(unescaped) else uri


def _open_local(path: str, max_bytes: int):
    """A regular local file opened without ever blocking, after its size was checked."""
    path = _local_path(path)
    try:
        info = os.stat(path)  # follows links: a link to /dev/zero is a character device
    except FileNotFoundError:
        if os.path.islink(path):
            raise UnsafeInput(
                "BrokenLink", f"a symbolic link to nothing ({os.readlink(path)}): not read"
            ) from None
        raise UnsafeInput(
            "FileNotFound", "the file is gone (listed at the start of the run, missing when read)"
        ) from None
    except OSError as e:  # a link loop (ELOOP), a name too long, a permission
        raise UnsafeInput("Unreadable", f"cannot stat it ({e.strerror}): not read") from None
    _check_stat(info, max_bytes)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        _check_stat(os.fstat(fd), max_bytes)  # the path may have been swapped since stat
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _check_stat(info: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(info.st_mode)
            else "a character device"
            if stat.S_ISCHR(info.st_mode)
            else "a block device"
            if stat.S_ISBLK(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "a folder"
            if stat.S_ISDIR(info.st_mode)
            else "not a regular file"
        )
        raise UnsafeInput("NotRegularFile", f"not a regular file ({kind}): not read")
    if info.st_size > max_bytes:
        raise UnsafeInput(
            "FileTooLarge", f"{info.st_size} bytes, over --max_file_bytes {max_bytes}: not read"
        )


def open_input(uri: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES):
    """A file object for a listed input, or UnsafeInput. Local paths are checked with
    ``os.stat`` before opening; other filesystems (gs://) only hold regular objects, whose
    size is checked from their metadata."""
    if "://" not in uri or uri.startswith("file://"):
        return _open_local(uri.removeprefix("file://"), max_bytes)
    found = FileSystems.match([uri])[0].metadata_list
    if not found:
        raise UnsafeInput(
            "FileNotFound", "the file is gone (listed at the start of the run, missing when read)"
        )
    if found[0].size_in_bytes > max_bytes:
        raise UnsafeInput(
            "FileTooLarge",
            f"{found[0].size_in_bytes} bytes, over --max_file_bytes {max_bytes}: not read",
        )
    return FileSystems.open(uri, compression_type="uncompressed")


def read_input(uri: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of a listed input, never more than ``max_bytes`` (a file that grew past the
    limit after its size was checked is refused too)."""
    with open_input(uri, max_bytes) as f:
        data = read_at_most(f, max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafeInput("FileTooLarge", f"more than --max_file_bytes {max_bytes} bytes: not read")
    return data


def read_at_most(stream, n: int) -> bytes:
    """Up to ``n`` bytes of ``stream`` (fewer at its end), read in chunks: a limit or a
    length a file only claims costs no more memory than the file holds (``read(n)`` asks for
    all ``n`` at once: a huge --max_file_bytes failed every file)."""
    chunks, left = [], n
    while left > 0 and (chunk := stream.read(min(left, hashing.CHUNK_BYTES))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class _Bounded:
    """A stream that refuses to return more than ``max_bytes`` in total."""

    def __init__(self, stream, max_bytes: int):
        self.stream, self.max_bytes, self.total = stream, max_bytes, 0

    def read(self, n: int = -1) -> bytes:
        chunk = self.stream.read(n)
        self.total += len(chunk)
        if self.total > self.max_bytes:
            raise UnsafeInput(
                "FileTooLarge", f"more than --max_file_bytes {self.max_bytes} bytes: not read"
            )
        return chunk


def hash_input(uri: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> str:
    """sha256 of a listed input, read in chunks, bounded as ``read_input``."""
    with open_input(uri, max_bytes) as f:
        return hashing.sha256_hex(_Bounded(f, max_bytes))


class DecodeFn(CountsProgress, beam.DoFn):
    """uri (or FileMetadata) -> DecodedImage at model size, or an `errors` row tagged ERRORS.
    Inputs are counted as matched where they are listed (``FirstOfIdFn``)."""

    def __init__(
        self,
        image_size: tuple[int, int],
        max_pixels: int,
        progress_folder: str | None = None,
        channels: int = 3,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ):
        self.image_size = tuple(image_size)
        self.channels = channels  # 1: grayscale model input
        self.progress_folder = progress_folder
        self.max_pixels = max_pixels
        self.max_file_bytes = max_file_bytes
        self.failed = Metrics.counter(NAMESPACE, "failed")

    def process(self, metadata):
        uri = metadata if isinstance(metadata, str) else metadata.path  # FileMetadata or uri
        stage = "read"
        try:
            data = read_input(uri, self.max_file_bytes)
            stage = "decode"
            pixels = decode_image(data, max_pixels=self.max_pixels)
            stage = "preprocess"
            height, width = pixels.shape[:2]
            image = model_input(pixels, self.image_size, self.channels)
        except (ImageError, UnsafeInput) as e:
            self.failed.inc()
            self.progress()
            yield beam.pvalue.TaggedOutput(
                ERRORS, error_row(uri, getattr(e, "stage", "read"), str(e), e.error_type)
            )
            return
        except Exception as e:  # noqa: BLE001 - any unreadable input is a dead letter, not a crash
            self.failed.inc()
            self.progress()
            yield beam.pvalue.TaggedOutput(ERRORS, error_row(uri, stage, e))
            return
        yield DecodedImage(
            uri, image_id(uri), int(width), int(height), hashlib.sha256(data).hexdigest(), image
        )


class HashFn(CountsProgress, beam.DoFn):
    """uri -> (sha256, ImageRef), the file read but not decoded; an unreadable file is an
    `errors` row (stage read) tagged ERRORS."""

    def __init__(
        self, progress_folder: str | None = None, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    ):
        self.progress_folder = progress_folder
        self.max_file_bytes = max_file_bytes
        self.failed = Metrics.counter(NAMESPACE, "failed")

    def process(self, uri):
        try:
            sha = hash_input(uri, self.max_file_bytes)
        except Exception as e:  # noqa: BLE001 - as DecodeFn: an unreadable input is a dead letter
            self.failed.inc()
            self.progress()
            kind = e.error_type if isinstance(e, UnsafeInput) else None
            yield beam.pvalue.TaggedOutput(ERRORS, error_row(uri, "read", e, kind))
            return
        yield sha, ImageRef(uri, image_id(uri), sha)


class FirstOfIdFn(beam.DoFn):
    """(image_id, uris with that id) -> the first uri in sorted order; each later one is an
    `errors` row (``DuplicateId``) naming it. Ids are derived from uris, so two listed uris
    share one only by a hash collision (12 hex digits); then one row is still written once
    under its id, whatever the order or the number of workers. Uris out; rows tagged ERRORS.
    Every listed uri is counted as matched here, once."""

    def __init__(self):
        self.matched = Metrics.counter(NAMESPACE, "matched")
        self.failed = Metrics.counter(NAMESPACE, "failed")

    def process(self, element):
        key, uris = element
        first, *later = sorted(uris)
        self.matched.inc(1 + len(later))
        yield first
        for uri in later:
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(
                ERRORS,
                error_row(
                    uri,
                    "read",
                    f"its image id {key!r} is the id of {first!r}, which is attributed under "
                    f"it: this file is not",
                    "DuplicateId",
                ),
            )


class ListedInputs(beam.PTransform):
    """The uris of the run's input list (a Parquet file with a ``uri`` column, written once
    by the launcher), or of a pattern matched here when no list is given (tests, notebooks),
    one per image id (``FirstOfIdFn``): ``.uris`` and ``[ERRORS]``. The group by id spreads
    the uris over workers, as a reshuffle would."""

    def __init__(self, pattern: str | None = None, inputs_list: str | None = None):
        super().__init__()
        self.pattern, self.inputs_list = pattern, inputs_list

    def expand(self, pbegin):
        return (
            listed_uris(pbegin, self.pattern, self.inputs_list)
            | "KeyById" >> beam.Map(lambda uri: (image_id(uri), uri))
            | "GroupById" >> beam.GroupByKey()
            | "FirstOfId" >> beam.ParDo(FirstOfIdFn()).with_outputs(ERRORS, main="uris")
        )


def listed_uris(pbegin, pattern: str | None, inputs_list: str | None = None):
    """The uris of the launcher's input list (a Parquet file with a ``uri`` column), else of
    ``pattern`` matched here: image files, or the shards of TFRecord input."""
    if inputs_list:
        return (
            pbegin
            | "ReadList" >> beam.io.ReadFromParquet(inputs_list, validate=False, columns=["uri"])
            | "Uri" >> beam.Map(lambda row: row["uri"])
        )
    return (
        pbegin
        | "Match" >> fileio.MatchFiles(pattern)
        | "Uri" >> beam.Map(lambda metadata: metadata.path)
    )
