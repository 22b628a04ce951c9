"""Every command-line option at its edges (negative, 0, nan, inf, huge, empty): a value the job
cannot honour is refused before any work, in one line, exit 2; an edge it accepts (a huge
--seed, --lock_timeout inf, ...) runs a real job to the end.

Each refused edge below was accepted before and then failed the job after work (or misled):
--seed -1 failed NumPy's generators (strategies' k-means, --randomize, the sanity sample);
--tolerance nan failed every worker's engine; --progress_interval inf killed the progress
thread with a traceback, -1 meant "off" silently; --noise_sigma / --max_blur_sigma inf failed
every row (a huge blur sigma allocated GBs); --grid_cells 1000 made the strategy search run
for hours (O(G^4)); --strategy_ablation_samples 2^63 failed in Beam; --artifacts '' meant
none silently, --image_key '' failed every record; --steps 2.5 printed argparse's 57-line
usage before its error.
"""

import importlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from job_argv import job_argv
from PIL import Image

from pipeline import options
from pipeline import run as job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = job_argv("x/*.png", "out", "m")
HUGE = str(2**63)  # past int64
FAST = ["--steps", "4", "--tolerance", "0", "--progress_interval", "0", "--faithfulness", "none"]

REFUSED = [  # (flags, the message's start): the option's own check, before any work
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (
        ["--tolerance", "nan"],
        "--tolerance must be >= 0 (0 disables refinement) and finite, got nan",
    ),
    (
        ["--tolerance", "inf"],
        "--tolerance must be >= 0 (0 disables refinement) and finite, got inf",
    ),
    (["--tolerance", "-0.5"], "--tolerance must be >= 0"),
    (["--progress_interval", "-1"], "--progress_interval must be from 0 (no progress lines) to "),
    (["--progress_interval", "nan"], "--progress_interval must be from 0"),
    (["--progress_interval", "inf"], "--progress_interval must be from 0"),
    (["--progress_interval", "1e308"], "--progress_interval must be from 0"),
    (["--noise_sigma", "nan"], "--noise_sigma must be > 0, got nan"),
    (["--noise_sigma", "inf"], "--noise_sigma must be at most 1 (the whole [0, 1] input range)"),
    (["--noise_sigma", "1e308"], "--noise_sigma must be at most 1"),
    (["--max_blur_sigma", "inf"], "--max_blur_sigma must be at most 1024 pixels, got inf"),
    (["--max_blur_sigma", "1e6"], "--max_blur_sigma must be at most 1024 pixels"),
    (["--max_blur_sigma", "nan"], "--max_blur_sigma must be > 0, got nan"),
    (["--grid_cells", "0"], "--grid_cells must be >= 1, got 0"),
    (["--grid_cells", "65"], "--grid_cells must be <= 64"),
    (["--grid_cells", HUGE], "--grid_cells must be <= 64"),
    (["--strategy_ablation_samples", HUGE], "--strategy_ablation_samples must be <= 20000"),
    (["--image_key", ""], "--image_key must name the TFRecord feature"),
    (["--image_key", " "], "--image_key must name the TFRecord feature"),
    (["--artifacts", ""], "--artifacts: empty (''); use a comma list"),
    (["--artifacts", ","], "--artifacts: empty"),
    # refused before this change too: the edges the brief names, kept refused
    (["--steps", str(2**31)], "--steps must be <= 4096 with --method gausslegendre"),
    (["--max_steps", HUGE], "--max_steps must be <= 4096"),
    (["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
    (["--image_batch_size", "0"], "--image_batch_size must be >= 1, got 0"),
    (["--max_pixels", "0"], "--max_pixels must be >= 1, got 0"),
    (["--max_file_bytes", "0"], "--max_file_bytes must be >= 1, got 0"),
    (["--mufidelity_subsets", HUGE], "--mufidelity_subsets must be from 3 to 4096"),
    (["--mufidelity_fraction", "nan"], "--mufidelity_fraction must be between 0 and 1"),
    (["--mufidelity_grid", "1"], "--mufidelity_grid must be 0 (single-pixel subsets) or from 2"),
    (["--rise_masks", "0"], "--rise_masks must be an even number from 2 to 65536"),
    (["--rise_p", "nan"], "--rise_p must be in (0, 1), got nan"),
    (
        ["--rise_masks", "65536", "--rise_grid", "64"],
        "--rise_masks x --rise_grid^2 must be at most",
    ),
    (["--report_classes", "0"], "--report_classes must be >= 1, got 0"),
    (["--commit_interval", "nan"], "--commit_interval must be >= 0 seconds, got nan"),
    (["--lock_timeout", "nan"], "--lock_timeout must be > 0 seconds, got nan"),
    (["--lock_timeout", "0"], "--lock_timeout must be > 0 seconds, got 0.0"),
    (["--clip_percentile", "101"], "--clip_percentile must be in (0, 100], got 101.0"),
    (["--clip_percentile", "nan"], "--clip_percentile must be in (0, 100], got nan"),
    (["--clip_high", "inf"], "--clip_low and --clip_high must satisfy 0 <= low < high <= 100"),
    (["--faithfulness_points", "1"], "--faithfulness_points must be >= 2"),
    (["--faithfulness_points", HUGE], "--faithfulness_points must be at most 1025"),
    (["--max_failure_fraction", "nan"], "--max_failure_fraction must be in [0, 1], got nan"),
    (["--guided_fraction", "inf"], "--guided_fraction must be in (0, 1], got inf"),
    (["--noise_samples", "0"], "--noise_samples must be from 1 to 1024"),
    (["--occlusion_window", "0"], "--occlusion_window must be >= 1 pixel"),
    (["--max_strategies", HUGE], "--max_strategies must be <= 50"),
    (["--target", " "], "--target must be 'predicted', a class index, or 'topk:K'"),
    (["--target", "topk:0"], "--target must be"),
    (["--baseline", ""], "--baseline must be a comma list of"),
    (["--faithfulness", ""], "--faithfulness must be 'none' or a comma list"),
    (["--run_id", ""], "--run_id must be 1-128 letters"),
    (["--colormap", " "], "--colormap ' ' is not a matplotlib colormap"),
    (["--image_size", "0,0"], "--image_size must be H,W with positive integers"),
]


@pytest.mark.parametrize("flags, message", REFUSED, ids=[" ".join(f) for f, _ in REFUSED])
def test_an_edge_the_job_cannot_honour_is_refused_in_one_line(flags, message):
    with pytest.raises(options.UsageError) as refused:
        options.parse([*REQUIRED, *flags])
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


NOT_VALUES = [  # argparse's refusals, one line as ours
    (["--steps", "1e308"], "argument --steps: invalid int value: '1e308'"),
    (["--steps", "2.5"], "argument --steps: invalid int value: '2.5'"),
    (["--seed", ""], "argument --seed: invalid int value: ''"),
    (["--tolerance", "x"], "argument --tolerance: invalid float value: 'x'"),
    (["--method", " "], "argument --method: invalid choice: ' '"),
    (["--tolerance", "-inf"], "argument --tolerance: expected one argument"),  # reads as a flag
    (["--seed"], "argument --seed: expected one argument"),
]


@pytest.mark.parametrize("flags, message", NOT_VALUES, ids=[" ".join(f) for f, _ in NOT_VALUES])
def test_a_value_argparse_refuses_is_one_line_too(flags, message, capsys):
    with pytest.raises(SystemExit) as refused:
        options.parse([*REQUIRED, *flags])
    assert refused.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {message}") and line.endswith(
        " (see python -m pipeline --help)"
    )


ACCEPTED = [  # meaningful edges, kept as given (the job at these runs below)
    (["--seed", str(2**64)], "seed", 2**64),
    (["--lock_timeout", "inf"], "lock_timeout", math.inf),  # never stale by age
    (["--commit_interval", "inf"], "commit_interval", math.inf),  # publish at bundle end only
    (["--commit_interval", "0"], "commit_interval", 0.0),
    (["--progress_interval", "0"], "progress_interval", 0.0),
    (["--progress_interval", "86400"], "progress_interval", 86400.0),
    (["--tolerance", "0"], "tolerance", 0.0),
    (["--max_file_bytes", HUGE], "max_file_bytes", 2**63),
    (["--max_pixels", HUGE], "max_pixels", 2**63),
    (["--report_classes", HUGE], "report_classes", 2**63),
    (["--grid_cells", "64"], "grid_cells", 64),
    (["--noise_sigma", "1"], "noise_sigma", 1.0),
    (["--max_blur_sigma", "1024"], "max_blur_sigma", 1024.0),
    (["--strategy_ablation_samples", "0"], "strategy_ablation_samples", 0),
    (["--lock_timeout=1e308"], "lock_timeout", 1e308),
    (["--rise_masks", "65536", "--rise_grid", "22"], "rise_grid", 22),  # 32M cells
]


@pytest.mark.parametrize("flags, name, value", ACCEPTED, ids=[" ".join(a[0]) for a in ACCEPTED])
def test_a_meaningful_edge_is_accepted(flags, name, value):
    ours, _ = options.parse([*REQUIRED, *flags])
    assert getattr(ours, name) == value


@pytest.mark.parametrize(
    "flags, line",
    [
        (["--seed", "-1"], "error: --seed must be >= 0, got -1"),
        (["--steps", "2.5"], "error: argument --steps: invalid int value: '2.5' (see "),
    ],
)
def test_python_m_pipeline_refuses_in_one_line_and_writes_nothing(
    tiny_model, tmp_path, flags, line
):
    folder = sided_pngs(tmp_path / "in", 2)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *job_argv(f"{folder}/*.png", out, tiny_model), *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    (said,) = done.stderr.strip().splitlines()
    assert said.startswith(line)
    assert not out.exists()


def sided_pngs(folder, count: int):
    """``count`` 16x16 PNGs, black but for a random stripe on the left (odd) or right (even):
    IG from the black baseline lies on the stripe, so a class holds two layouts."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        a = np.zeros((16, 16, 3), np.uint8)
        a[:, slice(0, 6) if i % 2 else slice(10, 16)] = rng.integers(0, 256, (16, 6, 3))
        Image.fromarray(a).save(folder / f"s{i}.png")
    return folder


def not_json(constant: str):
    raise AssertionError(f"{constant} is not JSON (RFC 8259): jq and JavaScript refuse it")


def test_a_job_at_its_accepted_edges_runs_to_the_end(tiny_model, tmp_path):
    """A seed past 2^64 seeds the strategies' k-means (two layouts in a class: it runs), with
    never-stale locks, commits at bundle end and no size limits to speak of."""
    folder = sided_pngs(tmp_path / "in", 24)
    out = tmp_path / "out"
    seed = 2**64 + 1
    edges = ["--seed", str(seed), "--lock_timeout", "inf", "--commit_interval", "inf"]
    edges += ["--max_file_bytes", HUGE, "--max_pixels", HUGE, "--report_classes", HUGE]
    argv = [*job_argv(f"{folder}/*.png", out, tiny_model), *FAST, *edges]
    assert job.main([*argv, "--strategy_min_rows", "6"]) == 0
    manifest = json.loads((out / "manifest.json").read_text(), parse_constant=not_json)
    assert manifest["complete"] and manifest["counts"]["attributed"] == 24
    # strict JSON, as jq and JavaScript read it: never-stale is the string "inf"
    assert (manifest["config"]["seed"], manifest["config"]["lock_timeout"]) == (seed, "inf")
    assert manifest["config"]["commit_interval"] == "inf"
    found = pq.read_table(out / "strategies").to_pylist()
    assert max(r["strategies"] for r in found) >= 2  # k-means ran, from the huge seed
    assert (out / "report.html").exists()
    # --randomize (the sanity check's stages) draws the random weights from the same seed
    again = tmp_path / "randomized"
    argv = [*job_argv(f"{folder}/*.png", again, tiny_model), *FAST, *edges]
    assert job.main([*argv, "--randomize", "top_layer", "--strategies", "none"]) == 0
    assert json.loads((again / "manifest.json").read_text())["complete"]


def own_options(tiny_model, tmp_path) -> list[tuple[str, list[str], str]]:
    """(module, argv, the refusal's line) of the other commands' own options."""
    sanity = ["--model", tiny_model, "--input_pattern", f"{tmp_path}/in/*.png"]
    sanity += ["--output_dir", str(tmp_path / "out")]
    compare = ["a", "b", "--output_dir", str(tmp_path / "out")]
    demo = ["--cache_dir", str(tmp_path / "out"), "--output_dir", str(tmp_path / "out" / "d")]
    return [
        ("pipeline.sanity", [*sanity, "--seed", "-1"], "error: --seed must be >= 0, got -1"),
        ("pipeline.sanity", [*sanity, "--steps", "0"], "error: --steps must be >= 1, got 0"),
        ("pipeline.sanity", [*sanity, "--sample", "0"], "error: --sample must be >= 1, got 0"),
        ("pipeline.sanity", [*sanity, "--lock_timeout", "nan"], "error: --lock_timeout must be"),
        ("pipeline.sanity", [*sanity, "--seed", "x"], "error: argument --seed: invalid int"),
        ("pipeline.compare.cli", [*compare, "--top", "-1"], "error: --top must be >= 0"),
        (
            "pipeline.compare.cli",
            [*compare, "--max_strategy_shift", "nan"],
            "error: --max_strategy_shift must be in [0, 1], got nan",
        ),
        ("pipeline.compare.cli", [*compare, "--top", "1e308"], "error: argument --top: invalid"),
        ("pipeline.report.cli", [str(tmp_path), "--report_classes", "0"], "error: --report_c"),
        ("demo.__main__", [*demo, "--count", "0"], "error: --count must be >= 1, got 0"),
        ("demo.__main__", [*demo, "--seed", "-1"], "error: --seed must be from 0 to 2**32 - 1"),
        ("demo.__main__", [*demo, "--seed", str(2**32)], "error: --seed must be from 0 to"),
    ]


def test_the_other_commands_refuse_their_own_edges_in_one_line_before_any_work(
    tiny_model, tmp_path, capsys
):
    sided_pngs(tmp_path / "in", 4)
    for module, argv, line in own_options(tiny_model, tmp_path):
        try:
            code = importlib.import_module(module).main(argv)
        except SystemExit as e:  # argparse's refusal
            code = e.code
        (said,) = capsys.readouterr().err.strip().splitlines()
        assert (code, said[: len(line)]) == (2, line), (module, argv)
        assert not (tmp_path / "out").exists(), (module, argv)  # no sample copied, no cache


def test_a_model_input_too_large_for_one_call_says_so_not_a_batch_size_that_cannot_fit():
    ours, _ = options.parse(REQUIRED)
    with pytest.raises(options.UsageError) as refused:  # 4.5 GiB an image: no batch fits
        options.validate_with_model(ours, 3, (20000, 20000))
    assert str(refused.value).startswith("the model input 20000x20000 is 4.5 GiB an image")
    assert "pass a smaller --image_size" in str(refused.value)
    with pytest.raises(options.UsageError, match="pass --batch_size 10 or less"):
        options.validate_with_model(ours, 3, (4096, 4096))  # 192 MiB an image


def test_mufidelity_subsets_that_draw_too_much_for_the_model_input_are_refused_at_model_load():
    flags = ["--faithfulness", "mufidelity", "--mufidelity_subsets", "4096"]
    ours, _ = options.parse([*REQUIRED, *flags, "--mufidelity_grid", "0"])  # single pixels
    with pytest.raises(options.UsageError) as refused:  # 4096 x 50176 draws: 1.6 GB an image
        options.validate_with_model(ours, 3, (224, 224))
    assert str(refused.value).startswith("--mufidelity_subsets 4096 x 50176 cells of the 224x224")
    assert str(refused.value).endswith("pass fewer subsets or a --mufidelity_grid from 2 to 128")
    options.validate_with_model(ours, 3, (16, 16))  # 4096 x 256: fine
    for grid in ("128", "9"):  # 2^26 draws exactly; the default grid
        ours, _ = options.parse([*REQUIRED, *flags, "--mufidelity_grid", grid])
        options.validate_with_model(ours, 3, (224, 224))
