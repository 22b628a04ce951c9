"""What the pages read besides a run's manifest and Parquet, and from where only.

No file is read because a row names it. A row's mask, overlay or raw file is read from
inside its run folder (``pipeline.html.artifact``: ``DIR/masks/<name>`` and so on, a regular
file, no symbolic link, size-capped). An original image is read only if it is
one of the run's inputs: for files, a path that the run's ``--input_pattern`` matches,
outside the run folder, read as the job reads inputs (regular file, ``--max_file_bytes``)
and only if the bytes still hash to the row's ``content_sha256`` (a row without one, which
the job never writes, shows no original: else a forged folder could have any image the
reader can read embedded); for TFRecord input, the image bytes of the record itself, found
in the shards the pattern matches (a record's id is never opened as a path). Anything else raises ``NotRead`` with
the reason the page shows in the picture's place.
"""

from __future__ import annotations

import hashlib
import os
import re

from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from transforms.files import NotRead

SCAN_BYTES = 1 << 30  # TFRecord: shard bytes read at most while looking for the shown records


def _config(manifest: dict, key: str):
    return (manifest.get("config") or {}).get(key)


def input_format(manifest: dict) -> str:
    from transforms.tfrecord import is_tfrecord_pattern

    given = _config(manifest, "input_format")
    if given:
        return given
    return "tfrecord" if is_tfrecord_pattern(_config(manifest, "input_pattern") or "") else "files"


def _pattern(manifest: dict) -> str:
    pattern = _config(manifest, "input_pattern")
    if not pattern:
        raise NotRead("the manifest records no --input_pattern: no original is read")
    return pattern


def _inside(output_dir: str, path: str) -> bool:
    return path.startswith(output_dir.rstrip("/") + "/")


def listed_file(output_dir: str, manifest: dict, uri: str | None) -> str:
    """``uri`` if the run listed it as an input (its pattern matches it, outside the run
    folder, a plain absolute path), else NotRead."""
    pattern = _pattern(manifest)
    if not uri:
        raise NotRead("no image uri recorded")
    plain = "://" in uri or (os.path.isabs(uri) and os.path.normpath(uri) == uri)
    if not plain or "/../" in uri or _inside(output_dir, uri) or "\x00" in uri:
        raise NotRead(f"{uri} is not one of the run's inputs: not read")
    if not re.match(FileSystem.translate_pattern(pattern), uri):
        raise NotRead(f"{uri} does not match the run's --input_pattern {pattern}: not read")
    return uri


def _checked(uri: str, data: bytes, sha256: str | None) -> bytes:
    if not sha256:
        raise NotRead(f"{uri}: the row records no content_sha256 to check it against: not shown")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise NotRead(f"{uri} changed since the run (its sha256 differs): not shown")
    return data


def _file(output_dir: str, manifest: dict, uri: str | None, sha256: str | None) -> bytes:
    from transforms.read import DEFAULT_MAX_FILE_BYTES, UnsafeInput, read_input

    path = listed_file(output_dir, manifest, uri)
    try:
        data = read_input(path, _config(manifest, "max_file_bytes") or DEFAULT_MAX_FILE_BYTES)
    except UnsafeInput as e:
        gone = e.error_type == "FileNotFound"
        raise NotRead(f"{uri} no longer exists" if gone else f"{uri}: {e}") from None
    except OSError as e:
        raise NotRead(f"{uri} cannot be read ({e.strerror or type(e).__name__})") from None
    return _checked(uri, data, sha256)


def _shards(output_dir: str, manifest: dict, wanted: dict[str, str | None]) -> list[str]:
    """The run's shards to look in: all that its pattern matches; without --id_key (record
    uris ``<shard>#<index>``) only those the wanted uris name."""
    pattern = _pattern(manifest)
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # noqa: BLE001 - the shards cannot be listed: nothing is shown
        raise NotRead(f"the run's shards ({pattern}) cannot be listed ({e})") from None
    shards = sorted(m.path for m in found if not _inside(output_dir, m.path))
    if _config(manifest, "id_key"):
        return shards
    named = {uri.rpartition("#")[0] for uri in wanted}
    return [s for s in shards if s in named]


def _records(
    output_dir: str, manifest: dict, wanted: dict[str, str | None]
) -> dict[str, bytes | NotRead]:
    """{uri: the image bytes of the run's record with that uri, or NotRead}: the first record
    of the run's shards (in shard, then record order) whose uri matches and whose image
    hashes to the row's content_sha256 (a row without one shows none)."""
    from transforms.read import ANY_SIZE, UnsafeInput, open_input
    from transforms.tfrecord import RecordKeys, parse_record, read_frames

    keys = RecordKeys(
        image_key=_config(manifest, "image_key") or "image/encoded",
        id_key=_config(manifest, "id_key"),
    )
    out: dict[str, bytes | NotRead] = {}
    budget = SCAN_BYTES
    for shard in _shards(output_dir, manifest, wanted):
        if budget <= 0 or len(out) == len(wanted):
            break
        try:
            with open_input(shard, ANY_SIZE) as stream:  # a regular file: never a FIFO
                for index, payload in enumerate(read_frames(stream)):
                    budget -= len(payload)
                    record = parse_record(payload, f"{shard}#{index}", keys)
                    if record.uri in wanted and record.uri not in out and record.data:
                        sha = wanted[record.uri]
                        if sha and hashlib.sha256(record.data).hexdigest() == sha:
                            out[record.uri] = record.data
                    if budget <= 0 or len(out) == len(wanted):
                        break
        except (UnsafeInput, OSError, ValueError) as e:
            for uri in wanted:  # the records of a shard that cannot be read stay unshown
                if uri.startswith(f"{shard}#"):
                    out.setdefault(uri, NotRead(f"{shard} cannot be read ({e})"))
        except Exception as e:  # noqa: BLE001 - a corrupt frame or record ends that shard
            for uri in wanted:
                if uri.startswith(f"{shard}#"):
                    out.setdefault(uri, NotRead(f"{shard}: {type(e).__name__}: {e}"))
    for uri in wanted:
        out.setdefault(
            uri,
            NotRead(
                f"no record {uri} with the row's image in the run's shards "
                f"({_config(manifest, 'input_pattern')})"
                + ("" if budget > 0 else f", in the first {SCAN_BYTES} bytes read")
            ),
        )
    return out


def originals(
    output_dir: str, manifest: dict, rows: list[tuple[str | None, str | None]]
) -> dict[str | None, bytes | NotRead]:
    """{image uri: its original bytes, or NotRead} for ``rows`` of (image_uri,
    content_sha256), read from the run's inputs only (see the module's doc)."""
    out: dict[str | None, bytes | NotRead] = {}
    try:
        tfrecord = input_format(manifest) == "tfrecord"
        _pattern(manifest)
    except NotRead as e:
        return {uri: e for uri, _ in rows}
    if tfrecord:
        wanted = {uri: sha for uri, sha in rows if uri}
        out.update(_records(output_dir, manifest, wanted) if wanted else {})
        out.update({uri: NotRead("no image uri recorded") for uri, _ in rows if not uri})
        return out
    for uri, sha in rows:
        try:
            out[uri] = _file(output_dir, manifest, uri, sha)
        except NotRead as e:
            out[uri] = e
    return out
