"""How a run is carried out, besides what it attributes: its inputs, run folder, lock and
commit, per-image files, limits and report; every default written once, validated once.

``JobConfig`` is to the job what ``attribution.config.AttributionConfig`` is to the
attribution: each field is the option ``--<field name>`` with its help, type and choices
(``pipeline.options`` generates the command line and the ``--config`` profiles' keys from
both), and ``transforms.settings.Settings`` takes the defaults of the fields the workers read
from ``JOB_DEFAULTS``. Neither Beam nor TensorFlow is imported here.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from attribution.config import Options, option
from transforms.layout import ARTIFACT_FOLDERS

INPUT_FORMATS = ("files", "tfrecord")
ARTIFACTS = ARTIFACT_FOLDERS  # what --artifacts may name: the per-image folders
RUN_ID = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
# --progress_interval: a day; past threading's TIMEOUT_MAX (inf, 1e308) the progress thread
# died with an OverflowError traceback in the middle of the run
MAX_PROGRESS_INTERVAL = 86400.0


@dataclass(frozen=True)
class JobConfig(Options):
    input_pattern: str | None = option(None, "Files to explain: a local glob or gs:// pattern.")
    output_dir: str | None = option(
        None,
        "Run folder: summaries/, errors/, masks/, overlays/, raw/, manifest.json, report.html.",
    )
    model: str | None = option(
        None,
        "SavedModel folder, .keras or .h5 file, TF Hub / Kaggle URL, or gs:// SavedModel "
        "mapping float32 [N,H,W,3] (or [N,H,W,1]: grayscale) in [0,1] to [N,C] scores.",
    )
    image_size: str | None = option(
        None, "H,W model input size; needed only when the signature has no static size."
    )
    write_raw: bool = option(False, "Also write raw/<image_id>.npy.")
    max_failure_fraction: float = option(
        1.0,
        "Exit non-zero after writing everything when more than this fraction of inputs failed.",
    )
    regions: str | None = option(
        None,
        "CSV or Parquet of boxes (image, region, x0, y0, x1, y1 in original pixels; image "
        "relative to the pattern's folder or a full uri): each row gets the share of positive "
        "attribution per region and a pointing-game hit.",
    )
    no_report: bool = option(False, "Do not write DIR/report.html at the end of the run.")
    report_classes: int = option(
        24,
        "Classes the report's per-class sections draw, those with the most suspicious "
        "strategies first; the rest are listed in tables.",
    )
    progress_interval: float = option(
        10.0, "Seconds between progress lines on DirectRunner; 0 turns them off."
    )
    reuse_from: str | None = option(
        None,
        "A previous run's output folder (local or gs://): images whose content, model and "
        "settings are unchanged get its rows and files copied forward; only new or changed "
        "images are attributed (docs/audits.md).",
    )
    input_format: str | None = option(
        None,
        "files: one image per file; tfrecord: one tf.train.Example per image in TFRecord "
        "shards (default: tfrecord when the pattern ends in .tfrecord*, else files).",
        choices=INPUT_FORMATS,
    )
    image_key: str = option("image/encoded", "TFRecord: the feature holding the encoded image.")
    id_key: str | None = option(
        None, "TFRecord: a feature to use as image_uri (default: <shard uri>#<index>)."
    )
    label_key: str | None = option(
        None,
        "TFRecord: a feature with the true class (int64 index, or text looked up in "
        "--labels): the true_class and true_label columns.",
    )
    regions_from_record: bool = option(
        False,
        "TFRecord: boxes image/object/bbox/{xmin,ymin,xmax,ymax} (normalised) named by "
        "image/object/class/text (or label) become regions, as --regions.",
    )
    artifacts: str = option(
        "masks,overlays",
        f"Per-image files to write: a comma list of {', '.join(ARTIFACTS)}, or none (then "
        "mask_uri/overlay_uri are null). --write_raw adds raw.",
    )
    # a randomization stage of pipeline.sanity applied to the model on load: not in --help
    randomize: str | None = option(None, argparse.SUPPRESS)
    run_id: str | None = option(
        None,
        "This run's name, recorded in the manifest (default: the UTC start time, "
        "e.g. 20260101T020000Z).",
    )
    overwrite: bool = option(
        False,
        "Replace the outputs of an earlier run in --output_dir (without it such a folder is "
        "refused).",
    )
    resume: bool = option(
        False,
        "Finish an interrupted run in --output_dir (same command): rows it already published "
        "are reused, the rest is computed.",
    )
    lock_timeout: float = option(
        86400.0,
        "Seconds after which another run's lock on --output_dir counts as stale (also stale "
        "at once when its process is gone on this host).",
    )
    max_file_bytes: int = option(
        256 * 1024 * 1024,
        "Refuse input files larger than this, from their size, before reading them.",
    )
    commit_interval: float = option(
        60.0,
        "Most seconds a worker holds finished rows before publishing them to the staging "
        "folder: a crash loses at most about this much work per worker.",
    )

    def validate(self) -> None:
        """The checks of these options that need neither the files nor the model; ValueError
        says what to pass instead (pipeline.options adds the checks of paths)."""
        self.check_choices()
        if self.randomize is not None:
            from attribution import randomization

            randomization.parse_stage(self.randomize)
        if not 0 <= self.max_failure_fraction <= 1:
            raise ValueError(
                f"--max_failure_fraction must be in [0, 1], got {self.max_failure_fraction}"
            )
        if self.run_id is not None and not re.fullmatch(RUN_ID, self.run_id):
            raise ValueError(
                f"--run_id must be 1-128 letters, digits, '.', '_', ':' or '-' "
                f"starting with a letter or digit, e.g. 2026-01-01; got {self.run_id!r}"
            )
        artifacts(self.artifacts, self.write_raw)
        if input_format(self) == "files":
            for name in ("id_key", "label_key"):
                if getattr(self, name):
                    raise ValueError(f"--{name} is for TFRecord input: add --input_format tfrecord")
            if self.regions_from_record:
                raise ValueError(
                    "--regions_from_record is for TFRecord input: add "
                    "--input_format tfrecord, or give boxes with --regions FILE"
                )
        if self.overwrite and self.resume:
            raise ValueError(
                "--overwrite and --resume exclude each other: --resume finishes the "
                "interrupted run in --output_dir, --overwrite starts it again"
            )
        if self.report_classes < 1:
            raise ValueError(f"--report_classes must be >= 1, got {self.report_classes}")
        if self.max_file_bytes < 1:
            raise ValueError(f"--max_file_bytes must be >= 1, got {self.max_file_bytes}")
        if not self.lock_timeout > 0:
            raise ValueError(f"--lock_timeout must be > 0 seconds, got {self.lock_timeout}")
        if not self.commit_interval >= 0:
            raise ValueError(f"--commit_interval must be >= 0 seconds, got {self.commit_interval}")
        if not 0 <= self.progress_interval <= MAX_PROGRESS_INTERVAL:
            raise ValueError(
                f"--progress_interval must be from 0 (no progress lines) to "
                f"{MAX_PROGRESS_INTERVAL:g} seconds, got {self.progress_interval}"
            )
        if not self.image_key.strip():
            raise ValueError(
                f"--image_key must name the TFRecord feature holding the encoded image, e.g. "
                f"{JOB_DEFAULTS.image_key}; got {self.image_key!r}"
            )


JOB_DEFAULTS = JobConfig()


def artifacts(text: str, write_raw: bool = False) -> tuple[str, ...]:
    """``masks,overlays`` -> ("masks", "overlays"); ``none`` -> (); --write_raw adds raw."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:  # '' was none silently
        raise ValueError(
            f"--artifacts: empty ({text!r}); use a comma list of {', '.join(ARTIFACTS)}, or none"
        )
    if names == ["none"]:
        names = []
    unknown = [n for n in names if n not in ARTIFACTS]
    if unknown:
        raise ValueError(
            f"--artifacts: unknown {unknown}; use a comma list of {', '.join(ARTIFACTS)}, or none"
        )
    if write_raw and "raw" not in names:
        names.append("raw")
    return tuple(n for n in ARTIFACTS if n in names)


def input_format(o) -> str:
    """--input_format, or tfrecord when the pattern's last part names .tfrecord files."""
    if o.input_format:
        return o.input_format
    return "tfrecord" if ".tfrecord" in (o.input_pattern or "").rsplit("/", 1)[-1] else "files"
