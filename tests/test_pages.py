"""Every HTML page (the run report, the comparison) escapes hostile labels, file names, folder
and region names; no page is built outside the templates; unreadable runs are refused with
one line; ``--help`` starts without Beam or TensorFlow."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from run_folders import HOSTILE, HOSTILE_REGION, make_run, png, summary_row

from pipeline import compare

REPO = Path(__file__).resolve().parent.parent
HOSTILE_LABEL = "<b>bold</b> & \"q\" 'label'"
HOSTILE_FOLDER = "run <i>a</i> & 'b'"


def assert_inert(page: str) -> None:
    """No markup from the data survives, and nothing is fetched from anywhere."""
    for raw in ("<script>alert(1)", "<b>bold", "<i>a</i>", "<i>region", "<ird>"):
        assert raw not in page, raw
    assert page.count("<script>") == 1  # the page's own image check
    assert re.findall(r'\bsrc="(?!data:)', page) == []
    assert re.findall(r'\bhref="(?!#)', page) == []
    assert "http://" not in page and "https://" not in page
    assert "default-src 'none'" in page


def hostile_runs(root: Path) -> tuple[Path, Path]:
    """Two runs of the same images; B predicts another class with hostile labels."""
    images = root / "images"
    uris = [png(images / HOSTILE, (20, 30), 1)] + [
        png(images / f"plain{i}.png", (20, 30), 10 + i) for i in range(3)
    ]
    folders = []
    for name, predicted in (("a", 0), ("b", 1)):
        folder = root / f"{HOSTILE_FOLDER} {name}"
        rows = []
        for i, uri in enumerate(uris):
            row = summary_row(folder, i, 0, image_uri=uri)
            for region in row["regions"]:
                region["name"] = HOSTILE_REGION
            rows.append(
                {
                    **row,
                    "predicted_class": predicted,
                    "predicted_label": f"{HOSTILE_LABEL} {predicted}",
                    "target_label": HOSTILE_LABEL,
                }
            )
        folders.append(make_run(folder, rows=rows))
    return folders[0], folders[1]


def test_compare_page_escapes_hostile_names(tmp_path, capsys):
    run_a, run_b = hostile_runs(tmp_path)
    out = tmp_path / "drift"
    assert compare.main([str(run_a), str(run_b), "--output_dir", str(out)]) == 0
    assert "compared 4 images" in capsys.readouterr().out
    page = (out / "drift.html").read_text()
    assert_inert(page)
    assert "we&lt;ird&gt; &amp; &#34;quoted&#34; &#39;name&#39; &lt;script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &#34;q&#34; &#39;label&#39; 1" in page
    assert "run &lt;i&gt;a&lt;/i&gt; &amp; &#39;b&#39; a" in page
    assert page.count("data:image/png;base64,") == 8  # 4 changed images, before | after


def test_report_page_escapes_hostile_names(tmp_path):
    run_a, _ = hostile_runs(tmp_path)
    from pipeline import report

    page = Path(report.write_report(str(run_a))).read_text()
    assert_inert(page)
    assert "&lt;i&gt;region&lt;/i&gt; &amp; &#34;co&#39;&lt;/th&gt;" in page


def test_no_python_module_writes_html():
    """Markup lives in templates only: no string literal in the code opens an HTML tag."""
    names = (
        "html|head|body|meta|title|style|script|header|nav|main|section|div|span|p|a|img|"
        "table|thead|tbody|tr|th|td|ul|ol|li|h[1-6]|figure|figcaption|code|pre|br|b|i|"
        "details|summary"
    )
    tag = re.compile(rf"<(?:/?(?:{names})[\s>/]|!doctype)", re.IGNORECASE)
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for folder in ("pipeline", "transforms")
        for path in sorted((REPO / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if tag.search(line)
    ]
    assert offenders == []


def damage(folder: Path, how: str) -> None:
    if how == "missing manifest":
        (folder / "manifest.json").unlink()
    elif how == "corrupt manifest":
        (folder / "manifest.json").write_text('{"counts": {"matched": 3')
    elif how == "manifest is a list":
        (folder / "manifest.json").write_text(json.dumps([{"counts": {}}]))
    elif how == "corrupt summaries":
        part = sorted((folder / "summaries").glob("*.parquet"))[-1]
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])


CASES = ("missing manifest", "corrupt manifest", "manifest is a list", "corrupt summaries")
EXPECTED = {
    "missing manifest": "manifest.json not found",
    "corrupt manifest": "manifest.json cannot be read as JSON",
    "manifest is a list": "manifest.json must hold a JSON object, got list",
    "corrupt summaries": "cannot be read as Parquet",
}


@pytest.mark.parametrize("how", CASES)
@pytest.mark.parametrize("command", ["pipeline.report", "pipeline.compare"])
def test_an_unreadable_run_exits_2_with_one_line(tmp_path, command, how):
    good = make_run(tmp_path / "good", rows=[summary_row(tmp_path / "good", 0, 0)])
    bad = make_run(tmp_path / "bad", rows=[summary_row(tmp_path / "bad", i, 0) for i in range(2)])
    damage(bad, how)
    args = (
        [str(bad)]
        if command == "pipeline.report"
        else [str(good), str(bad), "--output_dir", str(tmp_path / "drift")]
    )
    result = subprocess.run(
        [sys.executable, "-m", command, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert EXPECTED[how] in lines[0]
    assert not (tmp_path / "drift").exists() and not (bad / "report.html").exists()


@pytest.mark.parametrize("command", ["pipeline.report", "pipeline.compare"])
def test_help_imports_neither_beam_nor_tensorflow(command):
    code = (
        f"import runpy, sys\nsys.argv = [{command!r}, '--help']\n"
        f"try:\n    runpy.run_module({command!r}, run_name='__main__')\n"
        f"except SystemExit as e:\n    assert e.code == 0\n"
        f"heavy = {{'tensorflow', 'apache_beam', 'matplotlib'}} & set(sys.modules)\n"
        f"assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert f"usage: python -m {command}" in result.stdout


def test_every_template_ships_with_the_package(tmp_path):
    """What ``pip install`` puts in site-packages (setup.py's ``package_data``, copied by
    ``build_py``) holds every template of the HTML layer."""
    import shutil

    shutil.copy(REPO / "setup.py", tmp_path)
    shutil.copytree(
        REPO / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("*.pyc")
    )
    result = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "-d", "lib"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    templates = REPO / "pipeline" / "html" / "templates"
    wanted = {p.relative_to(templates) for p in templates.rglob("*") if p.is_file()}
    built = tmp_path / "lib" / "pipeline" / "html" / "templates"
    assert wanted and {p.relative_to(built) for p in built.rglob("*") if p.is_file()} >= wanted


def test_every_section_of_every_page_has_its_template():
    from pipeline.compare.page import SECTIONS as COMPARE
    from pipeline.html import environment
    from pipeline.report.methods import SECTIONS as METHODS
    from pipeline.report.sections import SECTIONS as REPORT
    from pipeline.sanity import _sections

    pages = {"report": REPORT, "methods": METHODS, "compare": COMPARE, "sanity": _sections()}
    for page, sections in pages.items():
        anchors = [s.anchor for s in sections]
        assert anchors and len(set(anchors)) == len(anchors), page
        for anchor in anchors:
            environment().get_template(f"{page}/{anchor}.html")  # raises if it is missing


def test_report_sections_are_listed_not_registered_by_importing():
    """The report's page order is the list in ``pipeline.report.sections``: importing a
    section's module registers nothing (it does not even load the list)."""
    code = (
        "import sys\n"
        "from pipeline.report import confusion, core, faithfulness, strategies\n"
        "assert 'pipeline.report.sections' not in sys.modules\n"
        "assert 'pipeline.report.page' not in sys.modules\n"
        "from pipeline.report.sections import SECTIONS\n"
        "print(' '.join(s.anchor for s in SECTIONS))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "run",
        "findings",
        "strategies",
        "errors",
        "completeness",
        "saturation",
        "heatmaps",
        "regions",
        "confusion",
        "faithfulness",
        "examples",
    ]
