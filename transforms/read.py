"""Match a file pattern, read and decode every file; broken files go to a dead-letter output."""
from __future__ import annotations

import hashlib

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from attribution.images import ImageError, decode_image, model_input
from transforms.ids import image_id
from transforms.progress import CountsProgress
from transforms.records import ERRORS, NAMESPACE, DecodedImage, error_row


class DecodeFn(CountsProgress, beam.DoFn):
    """FileMetadata -> DecodedImage at model size, or an `errors` row tagged ERRORS."""

    def __init__(self, image_size: tuple[int, int], max_pixels: int, count_matched: bool = True,
                 progress_folder: str | None = None, channels: int = 3):
        self.image_size = tuple(image_size)
        self.channels = channels  # 1: grayscale model input
        self.progress_folder = progress_folder
        self.max_pixels = max_pixels
        self.count_matched = count_matched  # False where an earlier step counted the input
        self.matched = Metrics.counter(NAMESPACE, "matched")
        self.failed = Metrics.counter(NAMESPACE, "failed")

    def process(self, metadata):
        uri = metadata if isinstance(metadata, str) else metadata.path  # FileMetadata or uri
        if self.count_matched:
            self.matched.inc()
        stage = "read"
        try:
            with FileSystems.open(uri, compression_type="uncompressed") as f:
                data = f.read()
            stage = "decode"
            pixels = decode_image(data, max_pixels=self.max_pixels)
            stage = "preprocess"
            height, width = pixels.shape[:2]
            image = model_input(pixels, self.image_size, self.channels)
        except ImageError as e:
            self.failed.inc()
            self.progress()
            yield beam.pvalue.TaggedOutput(ERRORS, error_row(uri, e.stage, str(e), e.error_type))
            return
        except Exception as e:  # noqa: BLE001 - any unreadable input is a dead letter, not a crash
            self.failed.inc()
            self.progress()
            yield beam.pvalue.TaggedOutput(ERRORS, error_row(uri, stage, e))
            return
        yield DecodedImage(uri, image_id(uri), int(width), int(height),
                           hashlib.sha256(data).hexdigest(), image)


class ReadImages(beam.PTransform):
    """pattern -> (DecodedImage, errors). Local paths and gs:// alike, through Beam's file I/O."""

    def __init__(self, pattern: str, image_size: tuple[int, int], max_pixels: int,
                 progress_folder: str | None = None, channels: int = 3):
        super().__init__()
        self.pattern, self.image_size, self.max_pixels = pattern, image_size, max_pixels
        self.progress_folder = progress_folder
        self.channels = channels

    def expand(self, pbegin):
        return (pbegin
                | "Match" >> fileio.MatchFiles(self.pattern)
                | "Reshuffle" >> beam.Reshuffle()
                | "Decode" >> beam.ParDo(DecodeFn(self.image_size, self.max_pixels,
                                                  progress_folder=self.progress_folder,
                                                  channels=self.channels))
                .with_outputs(ERRORS, main="images"))
