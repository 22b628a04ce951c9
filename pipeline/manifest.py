"""The run's record: counts read back from the written outputs, metrics, config, versions."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform

from apache_beam.metrics.metric import MetricsFilter

from transforms.files import RunFolderError, json_bytes, publish, read_manifest, read_parquet
from transforms.layout import ERRORS, MANIFEST, SUMMARIES, join
from transforms.records import NAMESPACE


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_column(output_dir: str, folder: str, column: str) -> list:
    """One column of every Parquet file under ``output_dir/folder``."""
    table = read_parquet(output_dir, folder, [column])
    return table.column(column).to_pylist() if table.num_columns else []


def metrics(result) -> dict[str, int]:
    """The job's counters under our namespace (committed where the runner has them)."""
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    out = {}
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    return out


def versions() -> dict[str, str]:
    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "tensorflow": version("tensorflow"),
        "apache_beam": version("apache-beam"),
        "numpy": version("numpy"),
        "pyarrow": version("pyarrow"),
        "tensorflow_hub": version("tensorflow-hub"),
        "beam_integrated_gradients": version("beam-integrated-gradients"),
    }


def build(
    *,
    output_dir: str,
    matched: list[str],
    config: dict,
    model: dict,
    job_metrics: dict,
    started_at: str,
    finished_at: str,
    run_id: str | None = None,
    settings_hash: str | None = None,
    reuse_from: str | None = None,
    previous: dict | None = None,
    records_read: int | None = None,
    attributed_uris: list[str] | None = None,
    failed_uris: list[str] | None = None,
) -> dict:
    """``previous``: the manifest found in ``reuse_from`` (--reuse_from), if any.
    ``records_read``: TFRecord input, where ``matched`` lists shards and the records (the
    inputs to account for) are counted by the job. The uris of the run's summary and error
    rows are read from ``output_dir`` unless given."""
    if attributed_uris is None:
        attributed_uris = read_column(output_dir, SUMMARIES, "image_uri")
    if failed_uris is None:
        failed_uris = read_column(output_dir, ERRORS, "image_uri")
    attributed, failed = set(attributed_uris), set(failed_uris)
    expected = set(matched)
    accounted = attributed | failed
    if records_read is not None:  # every record is in summaries or errors under its own uri
        expected = accounted if records_read == len(accounted) else set(matched)
    reused = job_metrics.get("reused", 0)
    return {
        "counts": {
            "matched": len(expected),
            "attributed": len(attributed),
            "failed": len(failed),
            "rows": len(attributed_uris),
            "error_rows": len(failed_uris),
            "missing": len(expected - accounted),
            "in_both": len(attributed & failed),
            "reused": reused,
            "computed": len(attributed) - reused,
        },
        "complete": expected == accounted
        and not (attributed & failed)
        and len(failed_uris) == len(failed),
        "metrics": {"model_loads": job_metrics.get("model_loads", 0), **job_metrics},
        "config": config,
        "model": model,
        "versions": versions(),
        "started_at": started_at,
        "finished_at": finished_at,
        "run_id": run_id,
        "settings_hash": settings_hash,
        "reuse_from": reuse_from,
        "previous_run_id": previous.get("run_id") if previous else None,
        "previous_finished_at": previous.get("finished_at") if previous else None,
    }


def write(output_dir: str, manifest: dict) -> str:
    """Write ``manifest.json`` atomically (temporary name + rename): a reader sees the old
    manifest or the new one, never a part; a failed write raises OutputWriteError naming it.
    Strict JSON: ``--lock_timeout inf`` is recorded as "inf" (``json_bytes``)."""
    path = join(output_dir, MANIFEST)
    publish(path, json_bytes(manifest))
    return path


def read(output_dir: str) -> dict | None:
    """The folder's manifest, None when there is none or it cannot be read."""
    try:
        return read_manifest(output_dir)
    except RunFolderError:
        return None
