"""The run folder's layout: every name a run writes under its ``--output_dir``, and the paths
of its private staging area. Names and paths only (no I/O, no Beam), so the job, the commit,
the folder's life cycle (pipeline/folder.py), the lock and every reader agree on one list.

```
DIR/manifest.json                  the run's record, written last by the commit
DIR/report.html                    the report (pipeline/report), unless --no_report
DIR/summaries/<name>.parquet       one row per (image, target)
DIR/errors/<name>.parquet          one row per input that failed
DIR/strategies/<name>.parquet      one row per (class, strategy), with --strategies auto
DIR/masks/, overlays/, raw/        per-image files the rows name (--artifacts, --write_raw)
DIR/.lock                          the run that owns the folder (pipeline/lock.py)
DIR/.staging/inputs.parquet        the list of inputs, matched once by the launcher, with
                                   what defines the run in its metadata (--resume compares)
DIR/.staging/summaries/<uuid>.parquet   published part files, moved by the commit
DIR/.staging/errors/<uuid>.parquet
DIR/.staging/model_loads/<uuid>    one small file per model load in a worker
DIR/.staging/previous/summaries/   parts of an interrupted attempt, reused by --resume
```
Names starting with a dot are not matched by ``DIR/summaries/*.parquet`` nor by a reader's
``*``, and the whole ``.staging`` folder is deleted by the commit.
"""

from __future__ import annotations

MANIFEST = "manifest.json"
REPORT = "report.html"
LOCK = ".lock"
STAGING = ".staging"

SUMMARIES, ERRORS, STRATEGIES = "summaries", "errors", "strategies"
MASKS, OVERLAYS, RAW = "masks", "overlays", "raw"
# Part folders every committed run has (an empty part when no row went there); strategies/
# exists only when the strategy stage ran.
PART_FOLDERS = (SUMMARIES, ERRORS)
# Files a run writes next to its rows, one per row and kind, and the column naming each.
ARTIFACT_FOLDERS = (MASKS, OVERLAYS, RAW)
ARTIFACT_COLUMNS = {MASKS: "mask_uri", OVERLAYS: "overlay_uri", RAW: "raw_uri"}
ARTIFACT_SUFFIXES = {MASKS: ".png", OVERLAYS: ".png", RAW: ".npy"}
# The contract's folders, then its files: everything a run writes into its folder (besides
# the lock). Nothing else in a folder is ever deleted.
CONTRACT_FOLDERS = (*PART_FOLDERS, STRATEGIES, *ARTIFACT_FOLDERS)
OUTPUTS = (*CONTRACT_FOLDERS, MANIFEST, REPORT, STAGING)
# What marks a folder as written by this tool: a committed run's manifest, an unfinished run's
# staging folder or a lock.
MARKS = (MANIFEST, STAGING, LOCK)

# Parts the commit writes itself: the inputs no step accounted for, and an empty part that
# keeps a folder readable when no row went there.
MISSING_PART = "missing.parquet"
EMPTY_PART = "empty.parquet"
# A file being written has this prefix until it is renamed to its name (transforms/files.py
# publish): readers and the commit pass over it, and a killed worker's leftovers are found.
TEMPORARY_PREFIX = ".tmp-"


def join(*parts: str) -> str:
    """``a/b/c`` from ``a/``, ``b``, ``c``: one slash between parts, local paths and
    ``gs://`` alike (os.path.join would use the local separator)."""
    return "/".join([parts[0].rstrip("/"), *parts[1:]])


def artifact_uri(output_dir: str, folder: str, name: str) -> str:
    """Where a row's mask, overlay or raw file is: ``DIR/<folder>/<name><suffix>``, ``name``
    the image id for an image's first target (transforms/summarize.py ``artifact_name``)."""
    return join(output_dir, folder, name + ARTIFACT_SUFFIXES[folder])


def staging_dir(output_dir: str) -> str:
    return join(output_dir, STAGING)


def inputs_path(output_dir: str) -> str:
    return join(output_dir, STAGING, "inputs.parquet")


def parts_dir(output_dir: str, folder: str) -> str:
    return join(output_dir, STAGING, folder)


def loads_dir(output_dir: str) -> str:
    return join(output_dir, STAGING, "model_loads")


def previous_dir(output_dir: str) -> str:
    return join(output_dir, STAGING, "previous")
