"""TFRecord input (``--input_format tfrecord``): each ``tf.train.Example`` is one image.

A shard is read as a stream of TFRecord frames (length, masked crc32c of the length, data,
masked crc32c of the data) from Beam's FileSystems, one record at a time, so a shard is never
held in memory whole. Work is split across shards: one shard per element after a Reshuffle.

- the image bytes are under ``--image_key`` (default ``image/encoded``);
- ``image_uri`` is the value of ``--id_key`` when given (and not empty), else the record's
  position ``<shard uri>#<record index>``; an id that is another record's position is an
  ``errors`` row (``PositionId``), so no two rows share a uri;
- ``--label_key`` (an int64 class index, or bytes text looked up in ``--labels``) becomes
  ``true_class`` / ``true_label``;
- with ``--regions_from_record``, boxes ``image/object/bbox/{xmin,ymin,xmax,ymax}``
  (normalised to [0, 1]) named by ``image/object/class/text`` (else ``.../label``) become
  regions keyed like ``--regions`` rows, in original pixels.

A record without the image key, or whose image cannot be decoded, is an ``errors`` row; a
record whose id repeats an earlier one's (by shard uri, record index) is a ``DuplicateId`` row. A
corrupt frame (bad checksum) or a truncated shard ends that shard: one ``errors`` row at
``<shard uri>#<index>`` says so; the records before it are attributed as usual.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics import Metrics

from attribution.images import ImageError, decode_image, model_input
from transforms.ids import image_id
from transforms.read import ANY_SIZE, listed_uris, open_input, read_at_most
from transforms.records import ERRORS, NAMESPACE, DecodedImage, ImageRef, error_row
from transforms.regions import region_key

BOX_KEYS = tuple(f"image/object/bbox/{k}" for k in ("xmin", "ymin", "xmax", "ymax"))
CLASS_TEXT, CLASS_LABEL = "image/object/class/text", "image/object/class/label"


def is_tfrecord_pattern(pattern: str) -> bool:
    """True when a pattern ends in ``.tfrecord*`` (``data/train.tfrecord-*``, ``*.tfrecords``)."""
    return ".tfrecord" in pattern.rsplit("/", 1)[-1]


class CorruptRecord(Exception):
    """A frame whose checksum does not match, or a shard that ends inside a frame."""


def _masked_crc32c(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# The longest record read (an encoded image with its features); a frame claiming more is
# refused before it is read.
MAX_RECORD_BYTES = 1 << 30


def read_frames(stream):
    """Yield the payload of each TFRecord frame of a binary stream; CorruptRecord when a
    checksum fails or the stream ends inside a frame."""
    while True:
        head = stream.read(12)
        if not head:
            return
        if len(head) < 12:
            raise CorruptRecord(f"truncated: the shard ends {len(head)} bytes into a header")
        length, length_crc = struct.unpack("<QI", head)
        if _masked_crc32c(head[:8]) != length_crc:
            raise CorruptRecord("the length checksum does not match (corrupt frame)")
        if length > MAX_RECORD_BYTES:  # its length checksum holds: written so, not damaged
            raise CorruptRecord(
                f"a record of {length} bytes, more than {MAX_RECORD_BYTES} (not read)"
            )
        body = read_at_most(stream, length + 4)  # in chunks: a claimed length costs nothing
        if len(body) < length + 4:
            raise CorruptRecord(f"truncated: the shard ends inside a record of {length} bytes")
        data, (data_crc,) = body[:length], struct.unpack("<I", body[length:])
        if _masked_crc32c(data) != data_crc:
            raise CorruptRecord("the data checksum does not match (corrupt record)")
        yield data


@dataclass(frozen=True)
class RecordKeys:
    """Which features of a tf.train.Example mean what (the command line's options)."""

    image_key: str = "image/encoded"
    id_key: str | None = None
    label_key: str | None = None
    regions_from_record: bool = False
    labels: tuple[str, ...] = ()


@dataclass
class Record:
    """One parsed Example: what the pipeline needs from it, image still encoded."""

    uri: str
    data: bytes | None
    true_class: int | None = None
    true_label: str | None = None
    boxes: list | None = None  # [(name, (xmin, ymin, xmax, ymax) normalised)]


def _values(feature):
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


def parse_record(payload: bytes, default_uri: str, keys: RecordKeys) -> Record:
    """Serialized tf.train.Example -> Record (``data`` None when the image key is missing)."""
    from tensorflow.core.example import example_pb2  # the worker has TF loaded anyway

    example = example_pb2.Example.FromString(payload)
    features = example.features.feature
    uri = default_uri
    if keys.id_key and keys.id_key in features and _values(features[keys.id_key]):
        value = _values(features[keys.id_key])[0]
        named = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        uri = named or default_uri  # an empty id names no row: the record's position does
    image = _values(features[keys.image_key]) if keys.image_key in features else []
    record = Record(uri, image[0] if image and isinstance(image[0], bytes) else None)
    if keys.label_key and keys.label_key in features and _values(features[keys.label_key]):
        value = _values(features[keys.label_key])[0]
        if isinstance(value, bytes):
            record.true_label = value.decode("utf-8", "replace")
            if record.true_label in keys.labels:
                record.true_class = keys.labels.index(record.true_label)
        else:
            record.true_class = int(value)
            record.true_label = (
                keys.labels[record.true_class]
                if 0 <= record.true_class < len(keys.labels)
                else str(record.true_class)
            )
    if keys.regions_from_record and all(k in features for k in BOX_KEYS):
        coords = [_values(features[k]) for k in BOX_KEYS]
        names = (
            [v.decode("utf-8", "replace") for v in _values(features[CLASS_TEXT])]
            if (CLASS_TEXT in features)
            else []
        )
        if not names and CLASS_LABEL in features:
            names = [str(int(v)) for v in _values(features[CLASS_LABEL])]
        record.boxes = [
            (names[i] if i < len(names) else f"box{i}", box) for i, box in enumerate(zip(*coords))
        ]
    return record


def decode_record(record: Record, image_size, max_pixels: int, channels: int = 3) -> DecodedImage:
    """Record -> DecodedImage at model size; ImageError / ValueError say why not."""
    if record.data is None:
        raise KeyError("the record has no image bytes under the image key")
    pixels = decode_image(record.data, max_pixels=max_pixels)
    height, width = pixels.shape[:2]
    return DecodedImage(
        record.uri,
        image_id(record.uri),
        int(width),
        int(height),
        hashlib.sha256(record.data).hexdigest(),
        model_input(pixels, image_size, channels),
        true_class=record.true_class,
        true_label=record.true_label,
    )


def record_regions(record: Record, width: int, height: int):
    """(region key, (index, name, box in original pixels)) for each box of a record, as
    transforms/regions.py's rows."""
    for index, (name, (x0, y0, x1, y1)) in enumerate(record.boxes or ()):
        yield (
            region_key(record.uri),
            (index, name, (x0 * width, y0 * height, x1 * width, y1 * height)),
        )


def read_shard(uri: str, keys: RecordKeys):
    """(index, Record) for each record of a shard, streamed; a corrupt or truncated frame
    yields (index, CorruptRecord) and ends the shard."""
    index = 0
    try:  # a regular file only, as an image file: a FIFO or a device would block or never end
        f = open_input(uri, ANY_SIZE)
    except Exception as e:  # noqa: BLE001 - a shard that cannot be opened is one error row
        yield index, CorruptRecord(f"cannot open the shard: {type(e).__name__}: {e}")
        return
    with f:
        frames = read_frames(f)
        while True:
            try:
                payload = next(frames)
            except StopIteration:
                return
            except CorruptRecord as e:
                yield index, e
                return
            default_uri = f"{uri}#{index}"
            try:
                yield index, parse_record(payload, default_uri, keys)
            except Exception as e:  # noqa: BLE001 - a payload that is not an Example
                yield index, CorruptRecord(f"not a tf.train.Example: {type(e).__name__}: {e}")
            index += 1


def corrupt_row(uri: str, index: int, error: CorruptRecord) -> dict:
    return error_row(
        f"{uri}#{index}",
        "read",
        f"{error}; record {index} and any after it in {uri} are not read",
        "CorruptRecord",
    )


def missing_image_row(record: Record, keys: RecordKeys) -> dict:
    return error_row(
        record.uri,
        "read",
        f"no {keys.image_key!r} feature in the record (set "
        f"--image_key to the feature holding the encoded image)",
        "MissingImageKey",
    )


def decode_or_error(
    record: Record, keys: RecordKeys, image_size, max_pixels: int, channels: int = 3
):
    """(DecodedImage, None) or (None, an `errors` row)."""
    if record.data is None:
        return None, missing_image_row(record, keys)
    try:
        return decode_record(record, image_size, max_pixels, channels), None
    except ImageError as e:
        return None, error_row(record.uri, e.stage, str(e), e.error_type)
    except Exception as e:  # noqa: BLE001 - any other bad record is a dead letter
        return None, error_row(record.uri, "preprocess", e)


# A record's position, ``<shard uri>#<index>``: the uri of a record without an id, and of
# the errors row of a corrupt frame or a repeated id.
_POSITION = re.compile(r"(.+)#(0|[1-9][0-9]*)")


def names_another_position(record_id: str, position: str, shards) -> bool:
    """An ``--id_key`` value that is the position of another record of this run's shards:
    used as a uri it would be the uri of that record's row or errors row too."""
    found = _POSITION.fullmatch(record_id)
    return record_id != position and found is not None and found.group(1) in shards


def position_id_row(record: Record, shard: str, index: int) -> dict:
    return error_row(
        f"{shard}#{index}",
        "read",
        f"record id {record.uri!r} names the position of another record of this run "
        f"(<shard>#<index> names a record without an id): this record is not attributed",
        "PositionId",
    )


class RecordsFn(beam.DoFn):
    """shard uri -> (image_id, (shard uri, index, Record or an `errors` row)) for each record,
    every record counted as matched; a corrupt frame is an `errors` row in its place, and so
    is a record whose id is another record's position (``names_another_position``; ``shards``
    the run's shard uris)."""

    def __init__(self, keys: RecordKeys):
        self.keys = keys
        self.matched = Metrics.counter(NAMESPACE, "matched")

    def process(self, uri, shards=()):
        for index, record in read_shard(uri, self.keys):
            self.matched.inc()
            if isinstance(record, CorruptRecord):
                item = corrupt_row(uri, index, record)
            elif names_another_position(record.uri, f"{uri}#{index}", shards):
                item = position_id_row(record, uri, index)
            else:
                item = record
            yield (
                image_id(item.uri if isinstance(item, Record) else item["image_uri"]),
                (
                    uri,
                    index,
                    item,
                ),
            )


class FirstOfIdFn(beam.DoFn):
    """(image_id, records with that id) -> the first by (shard uri, record index), whatever
    the order they arrived in or the number of workers; each later one is an `errors` row
    (``DuplicateId``) under its own position ``<shard uri>#<index>``, naming the first. So
    every row is written once under a unique id. Records out; rows tagged ERRORS."""

    def __init__(self):
        self.failed = Metrics.counter(NAMESPACE, "failed")

    def process(self, element):
        _, group = element
        (shard, index, first), *later = sorted(group, key=lambda found: found[:2])
        if isinstance(first, Record):
            yield first
        else:
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, first)
        first_id = first.uri if isinstance(first, Record) else first["image_uri"]
        for other_shard, other_index, item in later:
            self.failed.inc()
            item_id = item.uri if isinstance(item, Record) else item["image_uri"]
            yield beam.pvalue.TaggedOutput(
                ERRORS,
                error_row(
                    f"{other_shard}#{other_index}",
                    "read",
                    f"record id {item_id!r} repeats the id of record {index} of {shard} "
                    f"({first_id!r}), which is attributed under it: this record is not",
                    "DuplicateId",
                ),
            )


def unique_records(pbegin, pattern: str, keys: RecordKeys, inputs_list: str | None = None):
    """The records of a shard pattern, one per id (``FirstOfIdFn``): main output Records,
    ERRORS the corrupt frames and repeated ids. Records are grouped by id in the graph,
    which moves their bytes through one shuffle."""
    shards = shard_paths(pbegin, pattern, inputs_list)
    return (
        shards
        | "ReadShards" >> beam.ParDo(RecordsFn(keys), beam.pvalue.AsList(shards))
        | "GroupById" >> beam.GroupByKey()
        | "FirstOfId" >> beam.ParDo(FirstOfIdFn()).with_outputs(ERRORS, main="records")
    )


class DecodeRecordsFn(beam.DoFn):
    """Record -> DecodedImage; errors tagged ERRORS."""

    def __init__(self, keys: RecordKeys, image_size, max_pixels: int, channels: int = 3):
        self.keys = keys
        self.image_size, self.max_pixels = tuple(image_size), max_pixels
        self.channels = channels  # 1: grayscale model input
        self.failed = Metrics.counter(NAMESPACE, "failed")

    def process(self, record):
        image, error = decode_or_error(
            record, self.keys, self.image_size, self.max_pixels, self.channels
        )
        if error is not None:
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, error)
            return
        yield image


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) as decode_image will return them, from the header alone (EXIF
    orientations 5-8 swap the sides)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if image.getexif().get(0x0112) in (5, 6, 7, 8):
            width, height = height, width
    return width, height


def header_regions(record: Record):
    """``record_regions`` of a record, its size read from the image header (before and
    without decoding); none when the header is unreadable (decoding says why)."""
    if not record.boxes or record.data is None:
        return
    try:
        width, height = header_size(record.data)
    except Exception:  # noqa: BLE001 - not an image: decoding will say so
        return
    yield from record_regions(record, width, height)


class HashRecordsFn(beam.DoFn):
    """Record -> (sha256 of the image bytes, ImageRef carrying the Record), hashed but not
    decoded; a record without image bytes is an `errors` row tagged ERRORS."""

    def __init__(self, keys: RecordKeys):
        self.keys = keys
        self.failed = Metrics.counter(NAMESPACE, "failed")

    def process(self, record):
        if record.data is None:
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, missing_image_row(record, self.keys))
            return
        sha = hashlib.sha256(record.data).hexdigest()
        yield sha, ImageRef(record.uri, image_id(record.uri), sha, record=record)


def shard_paths(pbegin, pattern: str, inputs_list: str | None = None):
    """The shards of a pattern (or of the launcher's input list, so a resumed run reads the
    shards it listed), one per element, spread over workers."""
    return listed_uris(pbegin, pattern, inputs_list) | "Reshuffle" >> beam.Reshuffle()
