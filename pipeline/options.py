"""Command-line options: a PipelineOptions subclass, YAML profiles, validation before work."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re

import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from attribution import randomization
from attribution.config import (  # noqa: F401 (the limits: their home before, callers read them here)
    MAX_BATCH,
    MAX_GAUSS_LEGENDRE,
    MAX_POINTS,
    AttributionConfig,
)
from attribution.strategies import StrategyConfig
from attribution.targets import Targets
from pipeline.launch import UsageError
from transforms.files import absolute

INPUT_FORMATS = ("files", "tfrecord")
ARTIFACTS = ("masks", "overlays", "raw")
RUN_ID = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"


class AttributionOptions(PipelineOptions):
    """The contract's options (../shared/DESIGN.md). Anything else is a Beam option.

    ``--labels`` is parsed by ``parse`` and kept away from Beam, whose Dataflow options use
    the same name for job labels.
    """

    @classmethod
    def _add_argparse_args(cls, parser):
        add = parser.add_argument

        def option(name):  # an attribution option: generated from attribution.config
            add_config_option(parser, name)

        add("--input_pattern", help="Files to explain: a local glob or gs:// pattern.")
        add(
            "--output_dir",
            help="Run folder: summaries/, errors/, masks/, overlays/, raw/, "
            "manifest.json, report.html.",
        )
        add(
            "--model",
            help="SavedModel folder, .keras or .h5 file, TF Hub / Kaggle URL, or "
            "gs:// SavedModel mapping float32 [N,H,W,3] (or [N,H,W,1]: "
            "grayscale) in [0,1] to [N,C] scores.",
        )
        option("model_output")
        option("preprocess")
        option("output_key")
        option("score")
        add(
            "--image_size",
            default=None,
            help="H,W model input size; needed only when the signature has no static size.",
        )
        option("target")
        option("method")
        option("steps")
        option("tolerance")
        option("max_steps")
        option("baseline")
        option("seed")
        option("batch_size")
        option("image_batch_size")
        add("--write_raw", action="store_true", help="Also write raw/<image_id>.npy.")
        add(
            "--max_failure_fraction",
            type=float,
            default=1.0,
            help="Exit non-zero after writing everything when more than this fraction of "
            "inputs failed.",
        )
        option("max_pixels")
        option("grid_cells")
        option("clip_percentile")
        add(
            "--regions",
            default=None,
            help="CSV or Parquet of boxes (image, region, x0, y0, x1, y1 in original pixels; "
            "image relative to the pattern's folder or a full uri): each row gets the "
            "share of positive attribution per region and a pointing-game hit.",
        )
        add(
            "--no_report",
            action="store_true",
            help="Do not write DIR/report.html at the end of the run.",
        )
        add(
            "--report_classes",
            type=int,
            default=24,
            help="Classes the report's per-class sections draw, those with the most "
            "suspicious strategies first; the rest are listed in tables.",
        )
        option("jit_compile")
        option("precision")
        add(
            "--progress_interval",
            type=float,
            default=10.0,
            help="Seconds between progress lines on DirectRunner; 0 turns them off.",
        )
        add(
            "--reuse_from",
            default=None,
            help="A previous run's output folder (local or gs://): images whose content, "
            "model and settings are unchanged get its rows and files copied forward; "
            "only new or changed images are attributed (docs/audits.md).",
        )
        add(
            "--input_format",
            default=None,
            choices=INPUT_FORMATS,
            help="files: one image per file; tfrecord: one tf.train.Example per image in "
            "TFRecord shards (default: tfrecord when the pattern ends in .tfrecord*, "
            "else files).",
        )
        add(
            "--image_key",
            default="image/encoded",
            help="TFRecord: the feature holding the encoded image.",
        )
        add(
            "--id_key",
            default=None,
            help="TFRecord: a feature to use as image_uri (default: <shard uri>#<index>).",
        )
        add(
            "--label_key",
            default=None,
            help="TFRecord: a feature with the true class (int64 index, or text looked up in "
            "--labels): the true_class and true_label columns.",
        )
        add(
            "--regions_from_record",
            action="store_true",
            help="TFRecord: boxes image/object/bbox/{xmin,ymin,xmax,ymax} (normalised) named "
            "by image/object/class/text (or label) become regions, as --regions.",
        )
        add(
            "--artifacts",
            default="masks,overlays",
            help="Per-image files to write: a comma list of masks, overlays, raw, or none "
            "(then mask_uri/overlay_uri are null). --write_raw adds raw.",
        )
        option("attribution")
        option("noise_sigma")
        option("noise_samples")
        option("baseline_samples")
        option("max_blur_sigma")
        option("guided_fraction")
        option("xrai_top_fraction")
        option("mask_polarity")
        option("clip_low")
        option("clip_high")
        option("colormap")
        option("overlay")
        option("mask_type")
        option("faithfulness")
        option("faithfulness_points")
        option("deletion_fill")
        option("mufidelity_subsets")
        option("mufidelity_fraction")
        option("mufidelity_grid")
        for name in ("layer", "occlusion_window", "occlusion_stride"):
            option(name)
        for name in ("rise_masks", "rise_grid", "rise_p"):
            option(name)
        add("--randomize", default=None, help=argparse.SUPPRESS)  # pipeline.sanity's stages
        add(
            "--run_id",
            default=None,
            help="This run's name, recorded in the manifest (default: the UTC start time, "
            "e.g. 20260101T020000Z).",
        )
        add(
            "--overwrite",
            action="store_true",
            help="Replace the outputs of an earlier run in --output_dir (without it such a "
            "folder is refused).",
        )
        add(
            "--resume",
            action="store_true",
            help="Finish an interrupted run in --output_dir (same command): rows it already "
            "published are reused, the rest is computed.",
        )
        add(
            "--lock_timeout",
            type=float,
            default=86400.0,
            help="Seconds after which another run's lock on --output_dir counts as stale "
            "(also stale at once when its process is gone on this host).",
        )
        add(
            "--max_file_bytes",
            type=int,
            default=256 * 1024 * 1024,
            help="Refuse input files larger than this, from their size, before reading them.",
        )
        add(
            "--commit_interval",
            type=float,
            default=60.0,
            help="Most seconds a worker holds finished rows before publishing them to the "
            "staging folder: a crash loses at most about this much work per worker.",
        )
        for field in dataclasses.fields(StrategyConfig):  # issue 21: the strategy stage
            kind = type(field.default)
            add(
                f"--{field.name}",
                type=kind,
                default=field.default,
                choices=field.metadata["choices"],
                help=field.metadata["help"],
            )


CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(AttributionConfig)}


def add_config_option(parser: argparse.ArgumentParser, name: str) -> None:
    """``--name`` from the AttributionConfig field: its default, type, choices and help."""
    field = CONFIG_FIELDS[name]
    kwargs = {"help": field.metadata["help"].replace("%", "%%")}  # argparse formats help
    if isinstance(field.default, bool):
        parser.add_argument(f"--{name}", action="store_true", **kwargs)
        return
    kwargs["default"] = field.default
    kind = field.metadata["type"]
    if kind is None and isinstance(field.default, (int, float)):
        kind = type(field.default)
    if kind is not None:
        kwargs["type"] = kind
    if field.metadata["choices"]:
        kwargs["choices"] = field.metadata["choices"]
    parser.add_argument(f"--{name}", **kwargs)


def _config_flags(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except OSError as e:
        raise UsageError(f"--config {path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UsageError(f"--config {path}: not valid YAML ({e})") from None
    if not isinstance(config, dict):
        raise UsageError(f"--config {path}: expected a mapping of option: value")
    _refuse_unknown_keys(path, config)
    flags = []
    for key, value in config.items():
        for item in value if isinstance(value, list) else [value]:
            if item is None or item is False:
                continue
            flags.append(f"--{key}")
            if item is not True:
                flags.append(str(item))
    return flags


def _refuse_unknown_keys(path: str, config: dict) -> None:
    """UsageError naming the first key of a --config profile that is no option (ours or
    Beam's), and the known option nearest to it: a misspelt key is never ignored."""
    known = set(PipelineOptions([]).get_all_options()) | {"labels"}
    for key in config:
        if key not in known:
            near = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"did you mean {near[0]!r}?" if near else "see python -m pipeline --help"
            raise UsageError(f"--config {path}: unknown option {key!r}: {hint}")


def help_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Integrated Gradients for every image matched by a pattern, on Apache Beam. "
        "Options not listed here are Beam's (--runner, --direct_num_workers, ...).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="YAML profile (configs/NAME.yaml); flags override it.")
    parser.add_argument(
        "--labels", default=None, help="Text file with one class label a line (line i = class i)."
    )
    AttributionOptions._add_argparse_args(parser)
    return parser


JOB_LABEL = re.compile(r"[a-z][a-z0-9_-]{0,62}=[^/\\]*")  # Dataflow's --labels key=value


def _split_labels(flags: list[str]) -> tuple[list[str], list[str]]:
    """(flags for us, flags for Beam): ``--labels FILE`` is ours (class labels), ``--labels
    key=value`` is a Dataflow job label (Airflow's Beam operator always adds one) and Beam's."""
    ours, beams, i = [], [], 0
    while i < len(flags):
        flag = flags[i]
        if flag == "--labels" and i + 1 < len(flags):
            pair, i = [flag, flags[i + 1]], i + 2
            (beams if JOB_LABEL.fullmatch(pair[1]) else ours).extend(pair)
            continue
        if flag.startswith("--labels="):
            (beams if JOB_LABEL.fullmatch(flag[len("--labels=") :]) else ours).append(flag)
        else:
            ours.append(flag)
            beams.append(flag)
        i += 1
    return ours, beams


def _switch_values(flags: list[str]) -> list[str]:
    """``--write_raw=true`` / ``=false`` (how Flex Templates pass booleans) -> the bare switch
    or nothing; ``=false`` also drops the switch set before it (by --config), else a
    profile's ``write_raw: true`` could not be turned off from the command line."""
    switches = {
        a.option_strings[0]
        for a in help_parser()._actions
        if isinstance(a, argparse._StoreTrueAction)
    }
    out = []
    for flag in flags:
        name, equals, value = flag.partition("=")
        if equals and name in switches and value.lower() in ("true", "false"):
            if value.lower() == "true":
                out.append(name)
            else:
                out = [f for f in out if f != name]
        else:
            out.append(flag)
    return out


def parse(argv: list[str]) -> tuple[argparse.Namespace, PipelineOptions]:
    """argv -> (validated contract options, PipelineOptions with everything)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    flags = _switch_values((_config_flags(known.config) if known.config else []) + rest)
    flags, beam_flags = _split_labels(flags)
    ours, rest = help_parser().parse_known_args(flags)  # --help and type errors exit here
    _refuse_stray_values(rest)
    ours.config = known.config
    ours.given_options = given_options(flags)
    validate(ours)
    return ours, PipelineOptions(beam_flags)


def _refuse_stray_values(rest: list[str]) -> None:
    """A value no option takes (an unquoted ``--input_pattern photos/*.png`` the shell expanded
    into many names) is refused: Beam would discard it with a warning and the job would read
    only the first file. A value after a Beam ``--flag`` (no ``=``) is that flag's."""
    for i, token in enumerate(rest):
        before = rest[i - 1] if i else ""
        if not token.startswith("-") and not (before.startswith("--") and "=" not in before):
            raise UsageError(
                f"{token!r} is not an option's value (a switch such as --overwrite takes "
                f"none; a pattern the shell expanded must be quoted: --input_pattern "
                f"'photos/*.png')"
            )


def given_options(flags: list[str]) -> list[str]:
    """The contract options set on the command line or in the config (not by default):
    ``--method`` / ``--steps`` given explicitly change expected_gradients / guided_ig."""
    parser = help_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given, _ = parser.parse_known_args(flags)
    return sorted(vars(given))


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[,x]\s*(\d+)\s*", str(text))
    if not match or 0 in (int(match.group(1)), int(match.group(2))):
        raise UsageError(
            f"--image_size must be H,W with positive integers, e.g. 224,224; got {text!r}"
        )
    return int(match.group(1)), int(match.group(2))


def parse_artifacts(text: str, write_raw: bool = False) -> tuple[str, ...]:
    """``masks,overlays`` -> ("masks", "overlays"); ``none`` -> (); --write_raw adds raw."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if names == ["none"]:
        names = []
    unknown = [n for n in names if n not in ARTIFACTS]
    if unknown:
        raise UsageError(
            f"--artifacts: unknown {unknown}; use a comma list of {', '.join(ARTIFACTS)}, or none"
        )
    if write_raw and "raw" not in names:
        names.append("raw")
    return tuple(n for n in ARTIFACTS if n in names)


def strategy_config(o: argparse.Namespace) -> StrategyConfig:
    """The strategy stage's options, validated (ValueError)."""
    config = StrategyConfig(
        **{f.name: getattr(o, f.name) for f in dataclasses.fields(StrategyConfig)}
    )
    config.validate()
    return config


def input_format(o: argparse.Namespace) -> str:
    """--input_format, or tfrecord when the pattern's last part names .tfrecord files."""
    if o.input_format:
        return o.input_format
    return "tfrecord" if ".tfrecord" in o.input_pattern.rsplit("/", 1)[-1] else "files"


def validate(o: argparse.Namespace) -> None:
    for name, example in (
        ("input_pattern", "'photos/*.jpg' or 'gs://bucket/images/**'"),
        ("output_dir", "'out/run-2026-11-26'"),
        ("model", "a SavedModel folder, a .keras file or a TF Hub URL"),
    ):
        if not getattr(o, name):
            raise UsageError(f"--{name} is required, e.g. {example}")
    try:
        AttributionConfig.from_options(o)  # the attribution options, checked in one place
        if o.randomize is not None:
            randomization.parse_stage(o.randomize)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not 0 <= o.max_failure_fraction <= 1:
        raise UsageError(f"--max_failure_fraction must be in [0, 1], got {o.max_failure_fraction}")
    parse_image_size(o.image_size)
    try:
        strategy_config(o)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if o.run_id is not None and not re.fullmatch(RUN_ID, o.run_id):
        raise UsageError(
            f"--run_id must be 1-128 letters, digits, '.', '_', ':' or '-' "
            f"starting with a letter or digit, e.g. 2026-01-01; got {o.run_id!r}"
        )
    if o.reuse_from:
        if absolute(o.reuse_from) == absolute(o.output_dir):
            raise UsageError(
                "--reuse_from must be a previous run's folder, not --output_dir "
                "itself: write each run to its own folder, e.g. "
                "--output_dir gs://bucket/audits/$(date +%F)"
            )
    parse_artifacts(o.artifacts, o.write_raw)
    if input_format(o) == "files":
        for name in ("id_key", "label_key"):
            if getattr(o, name):
                raise UsageError(f"--{name} is for TFRecord input: add --input_format tfrecord")
        if o.regions_from_record:
            raise UsageError(
                "--regions_from_record is for TFRecord input: add "
                "--input_format tfrecord, or give boxes with --regions FILE"
            )
    for name in ("labels", "regions"):
        path = getattr(o, name)
        if path and "://" not in path and not os.path.isfile(path):
            what = "a folder, not a file" if os.path.isdir(path) else "no such file"
            raise UsageError(f"--{name} {path}: {what}")
    if o.overwrite and o.resume:
        raise UsageError(
            "--overwrite and --resume exclude each other: --resume finishes the "
            "interrupted run in --output_dir, --overwrite starts it again"
        )
    if o.report_classes < 1:
        raise UsageError(f"--report_classes must be >= 1, got {o.report_classes}")
    if o.max_file_bytes < 1:
        raise UsageError(f"--max_file_bytes must be >= 1, got {o.max_file_bytes}")
    if not o.lock_timeout > 0:
        raise UsageError(f"--lock_timeout must be > 0 seconds, got {o.lock_timeout}")
    if not o.commit_interval >= 0:
        raise UsageError(f"--commit_interval must be >= 0 seconds, got {o.commit_interval}")
    if (
        "://" not in o.output_dir
        and os.path.lexists(o.output_dir)
        and not os.path.isdir(o.output_dir)
    ):
        raise UsageError(
            f"--output_dir {o.output_dir} is an existing file, not a folder: "
            f"pass a folder path (it is created if missing)"
        )


# Most bytes of model input in one call: --batch_size rows of H x W x 3 float32.
MAX_CALL_BYTES = 2 * 1024**3


def validate_with_model(
    o: argparse.Namespace, num_classes: int, image_size: tuple[int, int], model=None
) -> None:
    """Checks that need the loaded model: a target it has, a call size that fits memory; with
    ``model`` (attribution.models.LoadedModel), gradcam's layer (``o.layer`` is set to the one
    used) and an occlusion window that fits the image."""
    if model is not None:
        _validate_methods(o, model, image_size)
    targets = Targets.parse(o.target)
    if targets.kind == "class" and not 0 <= targets.value < num_classes:
        raise UsageError(
            f"--target {o.target}: the model has {num_classes} classes "
            f"(0 to {num_classes - 1}); pass one of them, or predicted"
        )
    call_bytes = o.batch_size * image_size[0] * image_size[1] * 3 * 4
    if call_bytes > MAX_CALL_BYTES:
        fits = max(1, MAX_CALL_BYTES // (image_size[0] * image_size[1] * 3 * 4))
        raise UsageError(
            f"--batch_size {o.batch_size} puts {call_bytes / 1024**3:.1f} GiB "
            f"of {image_size[0]}x{image_size[1]} inputs in one model call: pass "
            f"--batch_size {min(fits, MAX_BATCH)} or less"
        )


def _validate_methods(o: argparse.Namespace, model, image_size: tuple[int, int]) -> None:
    """Issue 22's methods against the model: its layers (gradcam), its input size."""
    from attribution.methods.config import CAMS, check_layer

    if o.attribution in CAMS:
        try:
            o.layer = check_layer(model.kind, model.layers, o.layer, o.attribution)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if o.attribution == "occlusion" and o.occlusion_window > min(image_size):
        raise UsageError(
            f"--occlusion_window {o.occlusion_window} is larger than the model input "
            f"{image_size[0]}x{image_size[1]}: pass at most {min(image_size)}"
        )
