"""The run folder's private parts: where data files wait before the commit, and writes that
never leave half a file.

```
DIR/.lock                          the run that owns the folder (pipeline/lock.py)
DIR/.staging/inputs.parquet        the list of inputs, matched once by the launcher, with
                                   what defines the run in its metadata (--resume compares)
DIR/.staging/summaries/<uuid>.parquet   published part files, moved by the commit
DIR/.staging/errors/<uuid>.parquet
DIR/.staging/model_loads/<uuid>    one empty file per model load in a worker
DIR/.staging/previous/summaries/   parts of an interrupted attempt, reused by --resume
```
Names starting with a dot are not matched by ``DIR/summaries/*.parquet`` nor by a reader's
``*``, and the whole ``.staging`` folder is deleted by the commit.
"""

from __future__ import annotations

import logging
import uuid

from apache_beam.io.filesystems import FileSystems

STAGING = ".staging"
LOCK = ".lock"


def join(*parts: str) -> str:
    return "/".join([parts[0].rstrip("/"), *parts[1:]])


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


def mark_model_load(output_dir: str) -> None:
    """Count one model load for the manifest (the commit counts the files): a job launched
    without a waiting launcher has no other way to report it."""
    try:
        with FileSystems.create(join(loads_dir(output_dir), uuid.uuid4().hex)) as f:
            f.write(b"1")  # not empty: a run folder never holds 0-byte files
    except Exception:  # noqa: BLE001 - a metric, never a reason to fail the bundle
        logging.debug("could not count a model load in %s", output_dir, exc_info=True)
