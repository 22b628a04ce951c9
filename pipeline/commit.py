"""The commit: the job's last stage, run once on the records of every published part.

It moves exactly the parts of committed bundles from ``DIR/.staging/`` into ``summaries/``
and ``errors/`` (parts of failed or retried bundle attempts are left behind and deleted with
the staging folder), names in ``errors`` any listed input no part accounts for, writes
``manifest.json`` atomically listing the run's data files, writes ``report.html``, deletes
the staging folder and removes the lock. It runs inside the job, so a job nobody waits for
(a Flex Template launch) ends committed too. Every step may run again (a retried commit):
a part already moved is found in place.
"""

from __future__ import annotations

import dataclasses
import io
import logging

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import lock as locks
from pipeline import manifest
from pipeline.folder import delete_tree, make_dirs, read_list, remove_temporaries
from transforms.files import OutputWriteError, file_digest, publish
from transforms.layout import (
    ARTIFACT_COLUMNS,
    EMPTY_PART,
    MISSING_PART,
    STRATEGIES,
    join,
    loads_dir,
    parts_dir,
    staging_dir,
)
from transforms.layout import PART_FOLDERS as FOLDERS
from transforms.records import error_row
from transforms.reuse import REVERIFIED_FAILED
from transforms.write import ERROR_SCHEMA, REUSED, SUMMARY_SCHEMA


def _uris(path: str, columns=("image_uri",)) -> list[str]:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        table = pq.read_table(f, columns=list(columns))
    return [value for column in columns for value in table.column(column).to_pylist() if value]


def _located(output_dir: str, folder: str, name: str) -> str:
    """The part's path: still staged, or already moved by an earlier try of the commit."""
    staged = join(parts_dir(output_dir, folder), name)
    return staged if FileSystems.exists(staged) else join(output_dir, folder, name)


def _count_files(folder: str) -> int:
    return len(FileSystems.match([f"{folder}/*"])[0].metadata_list)


@dataclasses.dataclass(frozen=True)
class CommitContext:
    """What the commit records besides the parts: made by the launcher (pipeline/run.py)
    before the job starts, pickled into the job's last step."""

    config: dict  # the options (Beam's given ones too) and the resolved image size
    model: dict  # the model's handle, kind, size, classes, output, fingerprint, ...
    started_at: str
    run_id: str
    settings_hash: str
    reuse_from: str | None
    previous: dict | None  # --reuse_from's run: its run_id and finished_at
    resumed: bool
    not_in_run: int  # --resume: files matched now that the interrupted run's list lacks
    definition: dict  # what defines the run: --resume compares it
    no_report: bool
    records: bool  # TFRecord input: the list holds shards, rows name their records
    strategies: bool  # --strategies auto: strategies/ is one of the run's folders
    lock_token: str | None  # the lock the commit releases (only if it is still this one)


def commit(output_dir: str, parts: list[dict], context: CommitContext) -> dict:
    """Publish the run (see the module's doc); returns the manifest written."""
    out = output_dir.rstrip("/")
    reverified = {(p["uri"], p["rank"]) for p in parts if p.get("kind") == REVERIFIED_FAILED}
    parts = sorted(
        (p for p in parts if p.get("kind") != REVERIFIED_FAILED),
        key=lambda p: (p["folder"], p["name"]),
    )
    uris = {folder: [] for folder in FOLDERS}
    for part in parts:
        if part["folder"] in uris:
            uris[part["folder"]].extend(_uris(_located(out, part["folder"], part["name"])))
    listed = read_list(out) or []
    if context.records:  # TFRecord: the list holds shards, rows name their records
        listed = sorted(set(uris["summaries"]) | set(uris["errors"]))
    missing = sorted(set(listed) - set(uris["summaries"]) - set(uris["errors"]))
    if missing:  # never an anonymous count: each one is an error row
        rows = [
            error_row(
                uri,
                "read",
                "listed at the start of the run, then read by no step of the job",
                "NotRead",
            )
            for uri in missing
        ]
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=ERROR_SCHEMA), buffer)
        publish(join(parts_dir(out, "errors"), MISSING_PART), buffer.getvalue())
        parts.append(
            {
                "folder": "errors",
                "name": MISSING_PART,
                "origin": "missing",
                "rows": len(rows),
                "images": len(rows),
                "gradient_evaluations": 0,
            }
        )
        uris["errors"].extend(missing)
    # strategies/ holds parts only when a class was clustered (it gets no empty part: a run
    # too small to cluster has no strategies/ folder); its files entry is there with auto
    folders = FOLDERS + ((STRATEGIES,) if context.strategies else ())
    for folder, schema in (("summaries", SUMMARY_SCHEMA), ("errors", ERROR_SCHEMA)):
        if not any(p["folder"] == folder for p in parts):  # readers find the folder, 0 rows
            buffer = io.BytesIO()
            pq.write_table(schema.empty_table(), buffer)
            publish(join(parts_dir(out, folder), EMPTY_PART), buffer.getvalue())
            parts.append(
                {
                    "folder": folder,
                    "name": EMPTY_PART,
                    "origin": "empty",
                    "rows": 0,
                    "images": 0,
                    "gradient_evaluations": 0,
                }
            )
    files = {folder: {} for folder in folders}  # {folder: {name: {size, sha256}}}
    for part in parts:
        folder, name = part["folder"], part["name"]
        target = join(out, folder, name)
        source = _located(out, folder, name)
        if source != target:
            make_dirs(join(out, folder))
            FileSystems.rename([source], [target])
        files[folder][name] = file_digest(target)
    for folder in folders:  # nothing but this run's parts under summaries/, errors/, ...
        keep = {join(out, folder, name) for name in files[folder]}
        stray = [
            m.path
            for m in FileSystems.match([join(out, folder, "*")])[0].metadata_list
            if m.path not in keep
        ]
        if stray:
            FileSystems.delete(stray)
    _remove_orphans(out, [join(out, "summaries", name) for name in files["summaries"]])
    remove_temporaries(out)
    summaries = [p for p in parts if p["folder"] == "summaries"]
    metrics = {
        "model_loads": _count_files(loads_dir(out)),
        "reused": sum(p["images"] for p in summaries if p["origin"] == REUSED),
        "gradient_evaluations": sum(p["gradient_evaluations"] for p in summaries),
        "parts": len(parts),
    }
    record = manifest.build(
        output_dir=out,
        matched=listed,
        config=context.config,
        model=context.model,
        job_metrics=metrics,
        started_at=context.started_at,
        finished_at=manifest.now(),
        run_id=context.run_id,
        settings_hash=context.settings_hash,
        reuse_from=context.reuse_from,
        previous=context.previous,
        attributed_uris=uris["summaries"],
        failed_uris=uris["errors"],
    )
    record["counts"].update(not_in_run=context.not_in_run, reverified_failed=len(reverified))
    record.update(files=files, resumed=context.resumed, report=None, report_error=None)
    record["definition"] = context.definition  # what --resume compares
    manifest.write(out, record)
    if not context.no_report:
        try:
            from pipeline.report import write_report

            record["report"] = write_report(out)
        except OutputWriteError as e:
            record["report_error"] = str(e)
        except Exception as e:  # noqa: BLE001 - the data is committed; say why there is no page
            logging.exception("could not write the report for %s", out)
            record["report_error"] = f"cannot write {out}/report.html: {type(e).__name__}: {e}"
        manifest.write(out, record)
    delete_tree(staging_dir(out))
    locks.release(out, context.lock_token)
    return record


def _remove_orphans(out: str, summaries: list[str]) -> None:
    """Masks, overlays and raw files no summary row names (an interrupted attempt's files for
    another --target or --artifacts, or for rows not in the final summaries) are deleted:
    the folder holds only what its rows point at."""
    named = {folder: set() for folder in ARTIFACT_COLUMNS}
    for path in summaries:
        for folder, column in ARTIFACT_COLUMNS.items():
            named[folder].update(u.rsplit("/", 1)[-1] for u in _uris(path, (column,)))
    for folder in ARTIFACT_COLUMNS:
        found = FileSystems.match([join(out, folder, "*")])[0].metadata_list
        orphans = [m.path for m in found if m.path.rsplit("/", 1)[-1] not in named[folder]]
        if orphans:
            FileSystems.delete(orphans)


class CommitFn(beam.DoFn):
    """[part records] -> the manifest, after publishing the run (runs once, last)."""

    def __init__(self, output_dir: str, context: CommitContext):
        self.output_dir, self.context = output_dir, context

    def process(self, parts):
        yield commit(self.output_dir, list(parts), self.context)
