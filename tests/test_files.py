"""The shared run-folder I/O (transforms/files.py) and chunked hashing (attribution/hashing.py)."""

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attribution import hashing
from transforms import files


def test_chunked_sha256_equals_hashlib_across_chunk_boundaries():
    data = bytes(range(256)) * 10_000  # 2.56 MB: three chunks of 1 MiB, the last partial
    assert hashing.sha256_hex(io.BytesIO(data)) == hashlib.sha256(data).hexdigest()
    digest = hashing.update(hashlib.sha256(b"prefix"), io.BytesIO(data), chunk_bytes=7)
    assert digest.hexdigest() == hashlib.sha256(b"prefix" + data).hexdigest()
    assert hashing.sha256_hex(io.BytesIO(b"")) == hashlib.sha256(b"").hexdigest()


def test_publish_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "report.html")
    files.publish(path, b"first")
    files.publish(path, b"second")
    assert (tmp_path / "report.html").read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    assert files.read_bytes(path) == b"second"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "manifest.json not found: "),
        ("{not json", "manifest.json cannot be read as JSON (JSONDecodeError: "),
        (b"\xff\xfe", "manifest.json cannot be read as JSON (UnicodeDecodeError: "),
        ("[1, 2]", "manifest.json must hold a JSON object, got list"),
    ],
)
def test_one_error_rule_for_manifests(tmp_path, content, message):
    if isinstance(content, str):
        (tmp_path / "manifest.json").write_text(content)
    elif content is not None:
        (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(files.RunFolderError, match=r"^[^\n]*$") as raised:
        files.read_manifest(str(tmp_path) + "/")
    assert message in str(raised.value)


def test_manifest_and_parquet_parts(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"counts": {"rows": 3}}))
    assert files.read_manifest(str(tmp_path)) == {"counts": {"rows": 3}}
    folder = tmp_path / "summaries"
    folder.mkdir()
    for n, values in ((1, [3]), (0, [1, 2])):
        pq.write_table(pa.table({"x": values}), folder / f"part-{n:05d}-of-00002.parquet")
    (folder / "notes.txt").write_text("not a part")
    parts = files.parquet_parts(str(tmp_path), "summaries")
    assert [p.rsplit("/", 1)[1] for p in parts] == [
        "part-00000-of-00002.parquet",
        "part-00001-of-00002.parquet",
    ]
    assert files.read_parquet(str(tmp_path), "summaries", ["x"]).column("x").to_pylist() == [
        1,
        2,
        3,
    ]
    assert files.read_parquet(str(tmp_path), "errors").num_rows == 0
    assert [b.num_rows for b in files.parquet_batches(parts[0], ["x"], 1)] == [1, 1]
    (folder / "part-00001-of-00002.parquet").write_bytes(b"PAR1 truncated")
    for read in (
        lambda: files.parquet_schema(parts[1]),
        lambda: files.read_parquet(str(tmp_path), "summaries"),
        lambda: list(files.parquet_batches(parts[1], ["x"], 10)),
    ):
        with pytest.raises(files.RunFolderError, match="cannot be read as Parquet"):
            read()
