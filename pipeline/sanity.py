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

The folder follows a run folder's rules: a lock while the check runs (``D/.lock``); a
folder holding an earlier check's outputs is refused unless ``--overwrite``, which deletes
them (those names only) first; a folder holding a pipeline run's outputs is refused. The
sample is read as the job reads inputs (regular files, ``--max_file_bytes``); raw files and
masks are read back only from inside the stage folders.

Exit codes: 0 the check passed, 1 it failed (the maps barely change when the model is
randomized) or a stage run failed, 2 bad options, 3 the model cannot load.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import io
import logging
import os
import sys

import numpy as np
import pyarrow as pa

from pipeline.console import quiet_start_up

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as python -m pipeline: errors in one line
with quiet_start_up():  # TensorFlow's C++ start-up banners, written straight to fd 2
    from attribution import randomization
    from attribution.models import ModelLoadError
    from pipeline import folder, options, run
from pipeline import lock as locks
from pipeline.evidence import read_summaries
from pipeline.launch import Parser
from transforms.files import (
    NotRead,
    OutputWriteError,
    RunFolderError,
    absolute,
    publish_table,
    read_artifact,
)
from transforms.files import publish as _write
from transforms.ids import image_id
from transforms.layout import MASKS, RAW
from transforms.read import DEFAULT_MAX_FILE_BYTES, UnsafeInput, read_input

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
OUTPUTS = ("sample", "stages", "sanity.parquet", "sanity.html")  # all the check writes


def max_file_bytes(rest: list[str]) -> int:
    """--max_file_bytes among the options passed on to the stage runs, else the default."""
    for i, r in enumerate(rest):
        value = r.split("=", 1)[1] if r.startswith("--max_file_bytes=") else None
        if r == "--max_file_bytes" and i + 1 < len(rest):
            value = rest[i + 1]
        if value is not None:
            try:
                return int(value)
            except ValueError:
                raise options.UsageError(
                    f"--max_file_bytes must be a whole number, got {value!r}"
                ) from None
    return DEFAULT_MAX_FILE_BYTES


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m pipeline.sanity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True)
    p.add_argument("--input_pattern", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--sample", type=int, default=64, help="images to check (seeded sample)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sample and the random weights")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier check's outputs in --output_dir (only those)",
    )
    p.add_argument(
        "--lock_timeout",
        type=float,
        default=86400.0,
        help="seconds after which another check's lock on --output_dir counts as stale",
    )
    return p


def sample(paths: list[str], count: int, seed: int) -> list[str]:
    """A seeded sample of the matched inputs, in matched order."""
    if count >= len(paths):
        return list(paths)
    chosen = np.random.default_rng(seed).choice(len(paths), size=count, replace=False)
    return [paths[i] for i in sorted(chosen)]


def copy_sample(paths: list[str], folder: str, max_bytes: int) -> dict[str, str]:
    """Copy the sample to ``folder`` (one file per image id), each read as the job reads an
    input (a FIFO or an oversized file is not copied; the warning names it):
    {copy uri: original uri}."""
    out = {}
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        suffix = name[name.rfind(".") :] if "." in name.lstrip(".") else ""
        target = f"{folder}/{image_id(path)}{suffix}"
        try:
            data = read_input(path, max_bytes)
        except UnsafeInput as e:
            logging.warning("sanity check: %s is not copied to the sample: %s", path, e)
            continue
        _write(target, data)
        out[target] = path
    return out


def stage_maps(run_dir: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """({image uri: raw attribution}, {image uri: mask uri}) of a run's first targets; raw
    files are read from inside ``run_dir`` only (``read_artifact``)."""
    table = read_summaries(run_dir, ["image_uri", "target_rank", "raw_uri", "mask_uri"])
    maps, mask_uris = {}, {}
    for row in table.to_pylist():
        if row["target_rank"] == 0 and row["raw_uri"]:
            raw = read_artifact(run_dir, RAW, row["raw_uri"])
            maps[row["image_uri"]] = np.load(io.BytesIO(raw), allow_pickle=False)
            mask_uris[row["image_uri"]] = row["mask_uri"]
    return maps, mask_uris


@functools.cache
def _sections():
    """The sanity page: the verdict with the medians per stage, then the masks."""
    from pipeline.html import Sections

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
    from pipeline.html import artifact_picture

    masks, originals = source["masks"], source["originals"]
    stages = ("original", *randomization.STAGES)

    def mask(stage, uri):
        folder = f"{source['output_dir']}/stages/{stage}"
        return artifact_picture(folder, MASKS, uri, stage, 96, True)

    return {
        "stages": stages,
        "images": [
            {
                "image": originals.get(uri, uri),
                "pictures": [mask(s, masks.get(s, {}).get(uri)) for s in stages],
            }
            for uri in sorted(masks.get("original", {}))[:THUMBNAILS]
        ],
    }


def render_html(
    *,
    model: str,
    pattern: str,
    rows: list[dict],
    masks: dict[str, dict],
    originals: dict[str, str],
    output_dir: str,
) -> str:
    from pipeline.html import render_page

    source = {
        "output_dir": output_dir,
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
    if not args.lock_timeout > 0:
        raise options.UsageError(f"--lock_timeout must be > 0 seconds, got {args.lock_timeout}")
    for flag in ("--randomize", "--faithfulness", "--write_raw", "--resume", "--reuse_from"):
        if any(r == flag or r.startswith(flag + "=") for r in rest):
            raise options.UsageError(f"{flag} is set by python -m pipeline.sanity itself: drop it")
    out = absolute(args.output_dir)
    # the stages' options (--steps 0, --seed -1 ...) refused now, not after the sample is copied
    options.parse(stage_argv(args, rest, out, randomization.STAGES[0]))
    matched = run.match_inputs(absolute(args.input_pattern), exclude=out)  # never our outputs
    taken = take_folder(out, args.overwrite, args.lock_timeout)
    try:
        return _check(args, rest, out, matched)
    finally:
        locks.release(out, taken.lock.token)


def take_folder(out: str, overwrite: bool, lock_timeout: float) -> folder.Taken:
    """Lock the check's folder as a run folder is locked (``pipeline.folder.take``): refuse
    a pipeline run's folder, or an earlier check's outputs without --overwrite; with it,
    delete those outputs (and nothing else) first."""
    foreign = folder.present_outputs(out)
    if foreign:
        raise options.UsageError(
            f"--output_dir {out} holds a pipeline run's outputs ({', '.join(foreign)}): "
            f"choose another folder for the sanity check"
        )
    earlier = folder.present_outputs(out, OUTPUTS)
    if earlier and not overwrite:
        raise options.UsageError(
            f"--output_dir {out} holds an earlier sanity check's outputs "
            f"({', '.join(earlier)}): pass --overwrite to replace them, or choose another folder"
        )
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("sanity-%Y%m%dT%H%M%SZ")
    try:
        return folder.take(
            out,
            run_id=run_id,
            overwrite=overwrite,
            resume=False,
            lock_timeout=lock_timeout,
            outputs=OUTPUTS,
        )
    except OSError as e:
        raise options.UsageError(
            f"--output_dir {out}: cannot create or write it ({e.strerror or e}): choose "
            f"another folder"
        ) from None


def stage_argv(args, rest: list[str], out: str, stage: str) -> list[str]:
    """The command line of one stage's run (``original``: the model as it is)."""
    argv = [
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
    return argv if stage == "original" else [*argv, "--randomize", stage]


def _check(args, rest: list[str], out: str, matched: list[str]) -> tuple[bool, str, str]:
    chosen = sample(matched, args.sample, args.seed)
    copies = copy_sample(chosen, f"{out}/sample", max_file_bytes(rest))
    maps, masks = {}, {}
    for stage in ("original", *randomization.STAGES):
        print(f"sanity check: stage {stage}", flush=True)
        result = run.run(stage_argv(args, rest, out, stage))
        if result.manifest is not None and not result.manifest.get("complete", True):
            raise RuntimeError(
                f"the {stage} run did not account for every input: {result.manifest['counts']}"
            )
        maps[stage], masks[stage] = stage_maps(f"{out}/stages/{stage}")
    rows = randomization.compare(maps)
    for row in rows:
        row["image"] = copies.get(row["image"], row["image"])
    table = pa.Table.from_pylist(rows, schema=SANITY_SCHEMA)
    publish_table(f"{out}/sanity.parquet", table)
    html = render_html(
        model=args.model,
        pattern=args.input_pattern,
        rows=rows,
        masks=masks,
        originals=copies,
        output_dir=out,
    )
    _write(f"{out}/sanity.html", html.encode("utf-8"))
    passed, text = randomization.verdict(rows)
    return passed, text, out


def main(argv: list[str] | None = None) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    try:
        passed, text, out = check(sys.argv[1:] if argv is None else list(argv))
    except (
        options.UsageError,
        ModelLoadError,
        RuntimeError,
        run.RunFailed,
        NotRead,
        RunFolderError,
        OutputWriteError,
    ) as e:
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
