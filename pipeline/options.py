"""Command-line options: a PipelineOptions subclass, YAML profiles, validation before work."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re

import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from attribution.config import MAX_BATCH, AttributionConfig
from attribution.faithfulness import check_mufidelity_size, parse_kinds
from attribution.methods.config import GUIDED_STEPS, QUADRATURE_ALPHA, RANDOM_ALPHA
from attribution.strategies import StrategyConfig
from attribution.targets import Targets
from pipeline.launch import Parser, UsageError, command_parser
from transforms import job_config
from transforms.job_config import JobConfig
from transforms.settings import Settings

# --help lists the options as runs of each config's fields, in their declared order, from the
# first to the last named here: a field added to a config is an option in its run.
HELP_RUNS = (
    (JobConfig, "input_pattern", "model"),
    (AttributionConfig, "model_output", "score"),
    (JobConfig, "image_size", "image_size"),
    (AttributionConfig, "target", "image_batch_size"),
    (JobConfig, "write_raw", "max_failure_fraction"),
    (AttributionConfig, "max_pixels", "clip_percentile"),
    (JobConfig, "regions", "report_classes"),
    (AttributionConfig, "jit_compile", "precision"),
    (JobConfig, "progress_interval", "artifacts"),
    (AttributionConfig, "attribution", "rise_p"),
    (JobConfig, "randomize", "commit_interval"),
)


def _help_order() -> tuple[str, ...]:
    names = []
    for config, first, last in HELP_RUNS:
        fields = [f.name for f in dataclasses.fields(config)]
        names += fields[fields.index(first) : fields.index(last) + 1]
    return tuple(names)


OPTIONS = _help_order()
CONFIG_FIELDS = {
    f.name: f for config in (AttributionConfig, JobConfig) for f in dataclasses.fields(config)
}


class AttributionOptions(PipelineOptions):
    """The contract's options (README's option tables). Anything else is a Beam option.

    ``--labels`` is parsed by ``parse`` and kept away from Beam, whose Dataflow options use
    the same name for job labels.
    """

    @classmethod
    def _add_argparse_args(cls, parser):
        for name in OPTIONS:
            add_config_option(parser, name)
        for field in dataclasses.fields(StrategyConfig):
            add_config_option(parser, field.name, field)


def add_config_option(parser: argparse.ArgumentParser, name: str, field=None) -> None:
    """``--name`` from its config field (AttributionConfig's or JobConfig's unless ``field``
    is given): its default, type, choices and help."""
    field = field or CONFIG_FIELDS[name]
    kwargs = {"help": field.metadata["help"].replace("%", "%%")}  # argparse formats help
    if isinstance(field.default, bool):
        parser.add_argument(f"--{name}", action="store_true", **kwargs)
        return
    kwargs["default"] = field.default
    kind = field.metadata.get("type")
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
    description = "Integrated Gradients for every image matched by a pattern, on Apache Beam."
    parser = command_parser("python -m pipeline", description, "--runner, --direct_num_workers")
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
    pre = Parser(prog="python -m pipeline", add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    flags = _switch_values((_config_flags(known.config) if known.config else []) + rest)
    _refuse_undecodable(flags)
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


def _refuse_undecodable(flags: list[str]) -> None:
    """An argument that is not UTF-8 text (a path with a Latin-1 byte) cannot be recorded in
    Beam's options, the manifest or the Parquet: refused now, not by a job that took the
    folder and failed."""
    for token in flags:
        try:
            token.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(token).decode("utf-8", "backslashreplace")
            raise UsageError(
                f"'{shown}' is not UTF-8 text: name the path in UTF-8 (rename it, or "
                f"use a link whose name is)"
            ) from None


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


def strategy_config(o: argparse.Namespace) -> StrategyConfig:
    """The strategy stage's options, validated (ValueError)."""
    config = StrategyConfig(
        **{f.name: getattr(o, f.name) for f in dataclasses.fields(StrategyConfig)}
    )
    config.validate()
    return config


def validate(o: argparse.Namespace) -> None:
    for name, example in (
        ("input_pattern", "'photos/*.jpg' or 'gs://bucket/images/**'"),
        ("output_dir", "'out/run-2026-11-26'"),
        ("model", "a SavedModel folder, a .keras file or a TF Hub URL"),
    ):
        if not getattr(o, name):
            raise UsageError(f"--{name} is required, e.g. {example}")
    try:  # the options' own checks, each in its config
        AttributionConfig.from_options(o)
        JobConfig.from_options(o)
        strategy_config(o)
    except ValueError as e:
        raise UsageError(str(e)) from None
    parse_image_size(o.image_size)
    from pipeline.folder import within  # resolved: a symbolic link to it is it

    if o.reuse_from and within(o.reuse_from, o.output_dir) and within(o.output_dir, o.reuse_from):
        raise UsageError(
            "--reuse_from must be a previous run's folder, not --output_dir "
            "itself: write each run to its own folder, e.g. "
            "--output_dir gs://bucket/audits/$(date +%F)"
        )
    for name in ("labels", "regions"):
        path = getattr(o, name)
        if path and "://" not in path and not os.path.isfile(path):
            what = "a folder, not a file" if os.path.isdir(path) else "no such file"
            raise UsageError(f"--{name} {path}: {what}")
    if (
        "://" not in o.output_dir
        and os.path.lexists(o.output_dir)
        and not os.path.isdir(o.output_dir)
    ):
        raise UsageError(
            f"--output_dir {o.output_dir} is an existing file, not a folder: "
            f"pass a folder path (it is created if missing)"
        )


def settings_from_options(o: argparse.Namespace, model, labels: tuple[str, ...]) -> Settings:
    """The Settings the workers get: the validated options (``o``, after
    ``validate_with_model`` resolved ``--layer``), the loaded model's facts and the labels.

    Guided IG takes GUIDED_STEPS steps unless --steps is given; expected gradients uses one
    random alpha per (image, reference) pair unless --method is given (then that rule)."""
    given = set(getattr(o, "given_options", ()))
    named = {f.name for f in dataclasses.fields(Settings)} & set(vars(o))
    values = {name: getattr(o, name) for name in named - {"labels"}}  # o.labels: the file
    if o.attribution == "guided_ig" and "steps" not in given:
        values.update(steps=GUIDED_STEPS, max_steps=max(o.max_steps, GUIDED_STEPS))
    values.update(
        {name: getattr(model, name) for name in ("image_size", "num_classes", "channels")}
    )
    reshaped = {  # the options the workers read in another form than the option's
        "tolerance": o.tolerance or None,  # 0: no refinement
        "clip_percentile": o.clip_percentile if o.clip_high is None else o.clip_high,
        "artifacts": job_config.artifacts(o.artifacts, o.write_raw),
        "faithfulness": parse_kinds(o.faithfulness),
        "expected_gradients_alpha": QUADRATURE_ALPHA if "method" in given else RANDOM_ALPHA,
        "strategy_config": strategy_config(o),
    }
    return Settings(**(values | reshaped), model_fingerprint=model.fingerprint, labels=labels)


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
    if "mufidelity" in parse_kinds(o.faithfulness):
        try:
            check_mufidelity_size(o.mufidelity_subsets, o.mufidelity_grid, image_size)
        except ValueError as e:
            raise UsageError(str(e)) from None
    row_bytes = image_size[0] * image_size[1] * 3 * 4
    if row_bytes > MAX_CALL_BYTES:  # "--batch_size 1 or less" would not fit either
        raise UsageError(
            f"the model input {image_size[0]}x{image_size[1]} is {row_bytes / 1024**3:.1f} GiB "
            f"an image, over the {MAX_CALL_BYTES / 1024**3:g} GiB a model call may hold: pass "
            f"a smaller --image_size"
        )
    call_bytes = o.batch_size * row_bytes
    if call_bytes > MAX_CALL_BYTES:
        fits = MAX_CALL_BYTES // row_bytes
        raise UsageError(
            f"--batch_size {o.batch_size} puts {call_bytes / 1024**3:.1f} GiB "
            f"of {image_size[0]}x{image_size[1]} inputs in one model call: pass "
            f"--batch_size {min(fits, MAX_BATCH)} or less"
        )


def _validate_methods(o: argparse.Namespace, model, image_size: tuple[int, int]) -> None:
    """Grad-CAM and occlusion against the model: its layers (gradcam), its input size."""
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
