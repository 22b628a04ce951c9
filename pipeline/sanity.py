"""`python -m pipeline.sanity`: the model-randomization sanity check over a seeded sample.

    python -m pipeline.sanity --model M --input_pattern P --output_dir D [--sample 64]
        [--seed 0] [any option of python -m pipeline, e.g. --method, --runner ...]

It is the main job run five times on the same sample: once with the model as it is and once
per cascading randomization stage (``attribution.randomization``: top layer, top 25%, 50%,
100% of the variables), where every worker re-initialises the loaded model deterministically
(the hidden ``--randomize STAGE`` setting). Then each stage's maps are compared with the
original ones:

    D/sample/            the sampled inputs (copied, named by image id)
    D/stages/<stage>/    each stage's run folder (summaries, raw attributions, masks)
    D/sanity.parquet     image, stage, rank_correlation (Spearman of |attribution|), ssim
    D/sanity.html        the verdict in words, medians per stage, masks side by side

Exit codes: 0 the check passed, 1 it failed (the maps barely change when the model is
randomized) or a stage run failed, 2 bad options, 3 the model cannot load.
"""

from __future__ import annotations

import argparse
import functools
import io
import logging
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from attribution import randomization
from attribution.models import ModelLoadError
from pipeline import options, run
from pipeline.evidence import read_summaries
from transforms.files import absolute
from transforms.files import publish as _write
from transforms.files import read_bytes as _read
from transforms.ids import image_id

SANITY_SCHEMA = pa.schema(
    [
        ("image", pa.string()),
        ("stage", pa.string()),
        ("stage_index", pa.int32()),
        ("rank_correlation", pa.float64()),
        ("ssim", pa.float64()),
    ]
)
THUMBNAILS = 8


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.sanity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True)
    p.add_argument("--input_pattern", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--sample", type=int, default=64, help="images to check (seeded sample)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sample and the random weights")
    return p


def sample(paths: list[str], count: int, seed: int) -> list[str]:
    """A seeded sample of the matched inputs, in matched order."""
    if count >= len(paths):
        return list(paths)
    chosen = np.random.default_rng(seed).choice(len(paths), size=count, replace=False)
    return [paths[i] for i in sorted(chosen)]


def copy_sample(paths: list[str], folder: str) -> dict[str, str]:
    """Copy the sample to ``folder`` (one file per image id): {copy uri: original uri}."""
    out = {}
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        suffix = name[name.rfind(".") :] if "." in name.lstrip(".") else ""
        target = f"{folder}/{image_id(path)}{suffix}"
        _write(target, _read(path))
        out[target] = path
    return out


def stage_maps(run_dir: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """({image uri: raw attribution}, {image uri: mask uri}) of a run's first targets."""
    table = read_summaries(run_dir, ["image_uri", "target_rank", "raw_uri", "mask_uri"])
    maps, mask_uris = {}, {}
    for row in table.to_pylist():
        if row["target_rank"] == 0 and row["raw_uri"]:
            maps[row["image_uri"]] = np.load(io.BytesIO(_read(row["raw_uri"])))
            mask_uris[row["image_uri"]] = row["mask_uri"]
    return maps, mask_uris


@functools.cache
def _sections():
    """The sanity page: the verdict with the medians per stage, then the masks."""
    from pipeline.report.templating import Sections

    sections = Sections()
    sections.add("verdict", "Verdict", "Randomization sanity check")(_verdict_data)
    sections.add("masks", "Masks", "Masks per stage")(_masks_data)
    return sections


def _verdict_data(source: dict) -> dict:
    passed, text = randomization.verdict(source["rows"])
    medians = randomization.medians(source["rows"])
    return {
        "passed": passed,
        "verdict": text,
        "model": source["model"],
        "pattern": source["pattern"],
        "images": len(source["masks"].get("original", {})),
        "threshold": randomization.PASS_CORRELATION,
        "rows": [
            [stage, m["images"], m["rank_correlation"], m["ssim"]] for stage, m in medians.items()
        ],
    }


def _masks_data(source: dict) -> dict:
    from pipeline.report.templating import picture

    masks, originals = source["masks"], source["originals"]
    stages = ("original", *randomization.STAGES)

    def mask(uri):
        return lambda: (_read(uri), "image/png")

    return {
        "stages": stages,
        "images": [
            {
                "image": originals.get(uri, uri),
                "pictures": [picture(mask(masks.get(s, {}).get(uri)), s, 96, True) for s in stages],
            }
            for uri in sorted(masks.get("original", {}))[:THUMBNAILS]
        ],
    }


def render_html(
    *, model: str, pattern: str, rows: list[dict], masks: dict[str, dict], originals: dict[str, str]
) -> str:
    from pipeline.report.templating import render_page

    source = {
        "model": model,
        "pattern": pattern,
        "rows": rows,
        "masks": masks,
        "originals": originals,
    }
    return render_page(
        page="sanity",
        title=f"Sanity check: {model}",
        heading="Randomization sanity check",
        subject=model,
        sections=_sections(),
        source=source,
    )


def check(argv: list[str]) -> tuple[bool, str, str]:
    """Run the check; returns (passed, verdict, output folder)."""
    args, rest = parser().parse_known_args(argv)
    if args.sample < 1:
        raise options.UsageError(f"--sample must be >= 1, got {args.sample}")
    for flag in ("--randomize", "--faithfulness", "--write_raw", "--output_dir", "--overwrite"):
        if any(r == flag or r.startswith(flag + "=") for r in rest):
            raise options.UsageError(f"{flag} is set by python -m pipeline.sanity itself: drop it")
    out = absolute(args.output_dir)
    matched = run.match_inputs(absolute(args.input_pattern), exclude=out)  # never our outputs
    chosen = sample(matched, args.sample, args.seed)
    copies = copy_sample(chosen, f"{out}/sample")
    maps, masks = {}, {}
    for stage in ("original", *randomization.STAGES):
        argv_stage = [
            "--model",
            args.model,
            "--input_pattern",
            f"{out}/sample/*",
            "--output_dir",
            f"{out}/stages/{stage}",
            "--write_raw",
            "--faithfulness",
            "none",
            "--strategies",  # the check compares maps; strategies would cost ablations
            "none",
            "--no_report",
            "--overwrite",  # each stage's folder is this check's own, rewritten on a rerun
            "--seed",
            str(args.seed),
            "--progress_interval",
            "0",
            *rest,
        ]
        if stage != "original":
            argv_stage += ["--randomize", stage]
        print(f"sanity check: stage {stage}", flush=True)
        result = run.run(argv_stage)
        if result.manifest is not None and not result.manifest.get("complete", True):
            raise RuntimeError(
                f"the {stage} run did not account for every input: {result.manifest['counts']}"
            )
        maps[stage], masks[stage] = stage_maps(f"{out}/stages/{stage}")
    rows = randomization.compare(maps)
    for row in rows:
        row["image"] = copies.get(row["image"], row["image"])
    table = pa.Table.from_pylist(rows, schema=SANITY_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    _write(f"{out}/sanity.parquet", buffer.getvalue())
    html = render_html(
        model=args.model, pattern=args.input_pattern, rows=rows, masks=masks, originals=copies
    )
    _write(f"{out}/sanity.html", html.encode("utf-8"))
    passed, text = randomization.verdict(rows)
    return passed, text, out


def main(argv: list[str] | None = None) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    try:
        passed, text, out = check(sys.argv[1:] if argv is None else list(argv))
    except (options.UsageError, ModelLoadError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)  # exit codes as python -m pipeline's
        return (
            2 if isinstance(e, options.UsageError) else (3 if isinstance(e, ModelLoadError) else 1)
        )
    print(text)
    print(f"sanity check: {out}/sanity.html, {out}/sanity.parquet")
    return 0 if passed else 1


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
