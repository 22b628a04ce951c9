"""`python -m demo` (what `make demo` runs): the offline audit that finds a planted shortcut.

1. generates the held-out split of the shapes dataset (the cue stamp on half the images of
   every class, boxes for `object` and `cue`),
2. trains the small CNN on the training split, where only `cross` carries the cue (cached),
3. runs the pipeline over the held-out images with the boxes as --regions (plus a control
   box per image: object-sized, on the background, for the ablation check),
4. prints where the report is and what it found, with the faithfulness evidence: how often
   attribution order beats random deletion, and how much masking the cue (and the control
   box) lowers the cue class's score,
5. runs the pipeline again over the same images with no boxes (the strategy stage finds where
   each class looks by itself) and prints the strategy finding for the cue class with the
   precision and recall of that strategy's members against the stamped images.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from pipeline.launch import Parser
from transforms.layout import REPORT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def job_argv(data: str, saved_model, output_dir: str, *flags: str) -> list[str]:
    """The demo job over the held-out images in ``data``; its folder is rewritten on every
    `make demo` (--overwrite)."""
    return [
        "--config",
        os.path.join(REPO, "configs", "demo.yaml"),
        "--input_pattern",
        os.path.join(data, "images", "*.png"),
        "--output_dir",
        output_dir,
        "--model",
        str(saved_model),
        "--labels",
        os.path.join(data, "labels.txt"),
        "--overwrite",
        *flags,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="python -m demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output_dir", default=os.path.join(REPO, "out", "demo"))
    parser.add_argument(
        "--strategies_output_dir",
        default=os.path.join(REPO, "out", "demo-strategies"),
        help="the second run's folder: the same images, no --regions",
    )
    parser.add_argument("--cache_dir", default=os.path.join(REPO, ".cache", "demo"))
    parser.add_argument("--count", type=int, default=240, help="held-out images to audit")
    parser.add_argument("--seed", type=int, default=0)
    args, pipeline_args = parser.parse_known_args(argv)
    from pipeline.folder import within

    first, second = args.output_dir, args.strategies_output_dir
    for refused, message in (  # before anything is generated or trained
        (
            within(first, second) or within(second, first),
            f"--output_dir {first} and --strategies_output_dir {second} are one folder or one "
            f"inside the other (also through a symbolic link): the second run would replace "
            f"or write into the first; pass two separate folders",
        ),
        (args.count < 1, f"--count must be >= 1, got {args.count}"),
        (
            not 0 <= args.seed < 2**32,
            f"--seed must be from 0 to 2**32 - 1 (Keras), got {args.seed}",
        ),
    ):
        if refused:
            print(f"error: {message}", file=sys.stderr)
            return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from pipeline.console import quiet_start_up

    with quiet_start_up():  # TensorFlow's C++ start-up banner, as `python -m pipeline` does
        from demo import dataset, model
        from demo.control import CONTROL, add_control_boxes
        from pipeline import evidence, report, run

    started = time.monotonic()
    data = os.path.join(
        args.cache_dir, f"heldout-v{dataset.GENERATOR_VERSION}-seed{args.seed}-n{args.count}"
    )
    if not os.path.isfile(os.path.join(data, "regions.csv")):
        dataset.generate(data, split="heldout", count=args.count, seed=args.seed)
    print(f"demo data: {args.count} held-out images in {data}")
    saved_model = model.train_or_load(args.cache_dir, seed=args.seed)
    regions = add_control_boxes(
        os.path.join(data, "regions.csv"), os.path.join(data, "regions-with-control.csv")
    )
    code = run.main(
        job_argv(data, saved_model, args.output_dir, "--regions", str(regions), *pipeline_args)
    )
    if code != 0:
        return code
    findings = report.findings(report.read_run(args.output_dir))
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s. Findings:")
    for line in findings:
        print(f"  - {line}")
    # the findings already quote the cue's ablation and the deletion-vs-random share; the
    # control says what masking any object-sized box does
    control = evidence.ablation_sentence(
        evidence.read_summaries(args.output_dir), dataset.CUE_CLASS, CONTROL
    )
    if control:
        print(f"  - control: {control} (an object-sized box on the background)")
    print(f"\nopen the report: {os.path.join(args.output_dir, REPORT)}")
    return without_boxes(args, data, saved_model, pipeline_args)


def without_boxes(args, data: str, saved_model, pipeline_args: list[str]) -> int:
    """The same audit with no boxes: the strategy stage alone must find the stamp."""
    from demo import dataset
    from demo.strategies import stamp_recovery
    from pipeline import report, run
    from pipeline.report import strategies

    started = time.monotonic()
    code = run.main(
        job_argv(
            data,
            saved_model,
            args.strategies_output_dir,
            "--write_raw=false",  # the strategies need the grid column only
            "--faithfulness",
            "none",
            *pipeline_args,
        )
    )
    if code != 0:
        return code
    found = report.read_run(args.strategies_output_dir)
    print(f"\nno boxes given: the run took {time.monotonic() - started:.0f} s.")
    cue = next((c for c, s in found.classes.items() if s.label == dataset.CUE_CLASS), None)
    worst = strategies.of(found).worst(cue) if cue is not None else None
    if not strategies.of(found).ran:
        print(
            "  - the strategy stage did not run (no strategies/ folder: --strategies none, "
            "or a version of the job without the stage): nothing to show"
        )
        return 0
    if worst is None:
        print(f"  - `{dataset.CUE_CLASS}` was not clustered (no strategies/ rows for it)")
        return 0
    if worst.suspicious:
        print(f"  - {strategies.finding(worst, 'predictions')}")
    else:
        print(f"  - no strategy of `{dataset.CUE_CLASS}` was flagged; the most suspicious:")
        print(f"    strategy {worst.strategy}, {strategies.certainty(worst)}")
    recovery = stamp_recovery(
        args.strategies_output_dir, os.path.join(data, "truth.csv"), worst.label, worst.strategy
    )
    print(f"  - {recovery.sentence()}")
    print(f"\nopen its report: {os.path.join(args.strategies_output_dir, REPORT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
