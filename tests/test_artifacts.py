"""--artifacts selects the per-image files; with none the rows and the report still work."""

import json
import os

import pyarrow.parquet as pq

from pipeline import run as job

FAST = ["--steps", "4", "--tolerance", "0", "--progress_interval", "0"]


def read(out):
    return pq.read_table(os.path.join(out, "summaries")).to_pylist()


def test_no_artifacts_then_a_rerun_that_wants_them(tiny_model, mixed_folder, tmp_path):
    folder, names, bad = mixed_folder
    common = ["--input_pattern", f"{folder}/*", "--model", tiny_model, *FAST]
    none, raw, again = tmp_path / "none", tmp_path / "raw", tmp_path / "again"
    assert job.main([*common, "--output_dir", str(none), "--artifacts", "none"]) == 0
    rows = read(none)
    assert len(rows) == len(names - bad)
    assert all(
        r["mask_uri"] is None and r["overlay_uri"] is None and r["raw_uri"] is None for r in rows
    )
    assert not {"masks", "overlays", "raw"} & set(os.listdir(none))
    report = (none / "report.html").read_text()
    assert "no file recorded" in report  # examples drawn from the rows, pictures marked missing

    assert job.main([*common, "--output_dir", str(raw), "--artifacts", "raw"]) == 0
    rows = read(raw)
    assert all(r["mask_uri"] is None and os.path.exists(r["raw_uri"]) for r in rows)
    assert sorted(os.listdir(raw / "raw")) == sorted(f"{r['image_id']}.npy" for r in rows)

    # reusing a run without masks for one that wants them: nothing to copy, so computed
    assert job.main([*common, "--output_dir", str(again), "--reuse_from", str(none)]) == 0
    manifest = json.loads((again / "manifest.json").read_text())
    assert manifest["counts"]["reused"] == 0 and manifest["complete"]
    assert all(
        os.path.exists(r["mask_uri"]) and os.path.exists(r["overlay_uri"]) for r in read(again)
    )
