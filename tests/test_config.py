"""attribution.config: each attribution default written once, the command line generated from
it, one validation, and no TensorFlow to read it."""

import argparse
import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from attribution.config import DEFAULTS, AttributionConfig
from attribution.methods.config import GUIDED_STEPS
from pipeline import options
from transforms.job_config import JOB_DEFAULTS, JobConfig
from transforms.settings import Settings

FIELDS = dataclasses.fields(AttributionConfig)
JOB_FIELDS = dataclasses.fields(JobConfig)
REQUIRED = ["--input_pattern", "x", "--output_dir", "o", "--model", "m"]


def test_every_field_is_an_option_with_its_default_choices_and_help():
    actions = {a.dest: a for a in options.help_parser()._actions}
    for f in (*FIELDS, *JOB_FIELDS):
        action = actions[f.name]
        assert action.option_strings == [f"--{f.name}"]
        assert action.default == f.default, f.name
        assert action.help.replace("%%", "%") == f.metadata["help"], f.name
        assert action.choices == f.metadata["choices"], f.name
        if isinstance(f.default, bool):
            assert isinstance(action, argparse._StoreTrueAction)
        elif f.default is not None and not isinstance(f.default, str):
            assert action.type is type(f.default), f.name
    assert actions["clip_high"].type is float  # None by default, a float when given
    ours, _ = options.parse(["--input_pattern", "x", "--output_dir", "o", "--model", "m"])
    assert AttributionConfig.from_options(ours) == DEFAULTS


def test_settings_and_the_engines_take_their_defaults_from_the_config():
    settings = {f.name: f.default for f in dataclasses.fields(Settings)}
    for f in FIELDS:
        if f.name == "faithfulness":
            assert settings[f.name] == ("deletion", "insertion")
        elif f.name != "clip_high":  # Settings carries clip_percentile / clip_low only
            assert settings[f.name] == f.default, f.name
    from attribution.integrated_gradients import IntegratedGradients
    from attribution.methods import MethodConfig
    from transforms.inference import IntegratedGradientsModelHandler

    for callable_ in (IntegratedGradients, MethodConfig, IntegratedGradientsModelHandler):
        for name, parameter in inspect.signature(callable_).parameters.items():
            if hasattr(DEFAULTS, name) and parameter.default is not inspect.Parameter.empty:
                assert parameter.default == getattr(DEFAULTS, name), (callable_, name)
    assert MethodConfig().baselines == ("black",)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": 0}, "--steps must be >= 1"),
        ({"method": "simpson"}, "--method must be one of"),
        ({"score": "logit", "model_output": "probabilities"}, "--score logit needs"),
        ({"target": "topk:0"}, "--target must be"),
        ({"faithfulness": "deletion,area"}, "--faithfulness must be"),
        ({"noise_sigma": 0.0}, "--noise_sigma must be > 0, got 0.0"),
        ({"baseline": "black,black"}, "--baseline lists a baseline twice"),
        ({"xrai_top_fraction": 1.5}, "--xrai_top_fraction must be in (0, 1]"),
        ({"clip_low": 99.0}, "--clip_low and --clip_high must satisfy"),
    ],
)
def test_validate_refuses_with_the_options_message(changes, message):
    DEFAULTS.validate()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        dataclasses.replace(DEFAULTS, **changes).validate()
    with pytest.raises(AttributeError):  # frozen: validated once, then unchanged
        DEFAULTS.steps = 8


def test_config_and_settings_load_without_tensorflow():
    code = (
        "import sys, attribution.config, transforms.settings\n"
        "attribution.config.DEFAULTS.validate()\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unquoted_pattern_the_shell_expanded_is_refused_not_cut_to_its_first_file(tmp_path):
    """`--input_pattern imgs/*.png` unquoted reaches us as one value and many stray names; Beam
    discarded the strays with a warning and the job read one image (exit 0). Refused instead."""
    names = []
    for i in range(3):
        (tmp_path / f"img{i}.png").write_bytes(b"")
        names.append(str(tmp_path / f"img{i}.png"))
    argv = ["--input_pattern", *names, "--output_dir", str(tmp_path / "out"), "--model", "m"]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {names[1]!r} is not")
    assert not (tmp_path / "out").exists()
    # a Beam flag's value is not a stray; neither is a Dataflow job label
    ours, _ = options.parse(
        [*argv[:2], *argv[4:], "--runner", "DirectRunner", "--labels", "team=qa"]
    )
    assert ours.input_pattern == names[0]
    # `--overwrite false` (a switch given a value) read as --overwrite on: refused too
    with pytest.raises(options.UsageError, match="'false' is not an option's value"):
        options.parse([*argv[:2], *argv[4:], "--overwrite", "false"])


def test_a_switch_a_config_turns_on_is_turned_off_by_name_false_on_the_command_line():
    """configs/demo.yaml sets write_raw: true; `--write_raw=false` (the Flex Template form)
    was dropped and the config's switch stayed on."""
    demo = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    base = ["--config", demo, "--input_pattern", "x", "--output_dir", "o"]
    ours, _ = options.parse([*base, "--model", "m", "--write_raw=false"])
    assert ours.write_raw is False
    ours, _ = options.parse([*base, "--model", "m"])
    assert ours.write_raw is True


# --- the job's options: transforms.job_config, and the Settings built from both configs ----
def test_every_option_is_a_field_of_one_config_listed_once_in_help():
    fields = [f.name for f in (*FIELDS, *JOB_FIELDS)]
    assert sorted(options.OPTIONS) == sorted(fields)  # each once, none left out
    ours, _ = options.parse(REQUIRED)
    assert JobConfig.from_options(ours) == dataclasses.replace(
        JOB_DEFAULTS, input_pattern="x", output_dir="o", model="m"
    )


def test_a_profile_sets_job_options_as_flags_do(tmp_path):
    profile = tmp_path / "job.yaml"
    profile.write_text("commit_interval: 5\nartifacts: masks\nmax_file_bytes: 1000\nresume: true\n")
    ours, _ = options.parse(["--config", str(profile), *REQUIRED])
    assert (ours.commit_interval, ours.artifacts, ours.max_file_bytes, ours.resume) == (
        5.0,
        "masks",
        1000,
        True,
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max_failure_fraction", "2"], "--max_failure_fraction must be in [0, 1], got 2.0"),
        (["--lock_timeout", "0"], "--lock_timeout must be > 0 seconds, got 0.0"),
        (["--commit_interval", "-1"], "--commit_interval must be >= 0 seconds, got -1.0"),
        (["--max_file_bytes", "0"], "--max_file_bytes must be >= 1, got 0"),
        (["--artifacts", "masks,pdf"], "--artifacts: unknown ['pdf']"),
        (["--run_id", "../x"], "--run_id must be 1-128 letters"),
        (["--id_key", "k"], "--id_key is for TFRecord input"),
        (["--overwrite", "--resume"], "--overwrite and --resume exclude each other"),
    ],
)
def test_job_options_are_refused_in_one_line_naming_the_flag(flags, message):
    with pytest.raises(options.UsageError) as refused:
        options.parse([*REQUIRED, *flags])
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_no_import_loop_between_the_configs():
    code = (
        "import sys, attribution.config\n"
        "assert 'attribution.methods.config' not in sys.modules, 'config imports methods'\n"
        "import transforms.job_config\n"
        "assert 'apache_beam' not in sys.modules and 'tensorflow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_engine_names_parameters_not_flags():
    from attribution.methods import MethodConfig

    for changes, message in (
        ({"noise_samples": 0}, "noise_samples must be >= 1, got 0"),
        ({"noise_sigma": 0.0}, "noise_sigma must be > 0, got 0.0"),
        ({"rise_masks": 3}, "rise_masks must be even and >= 2, got 3"),
        ({"rise_p": 1.0}, "rise_p must be in (0, 1), got 1.0"),
        ({"expected_gradients_alpha": "x"}, "expected_gradients_alpha must be one of"),
        ({"attribution": "lime"}, "attribution must be one of"),
    ):
        with pytest.raises(ValueError) as refused:
            MethodConfig(**changes)
        assert str(refused.value).startswith(message), refused.value
    # the same values given as options are refused by the config, naming the flag
    with pytest.raises(ValueError, match="^--noise_samples must be from 1 to"):
        dataclasses.replace(DEFAULTS, noise_samples=0).validate()


def test_settings_from_options_is_the_options_with_the_model_facts(tiny_model, tmp_path):
    from attribution.models import load_model

    model = load_model(str(tiny_model))
    labels = ("a", "b")

    def settings(*flags):
        ours, _ = options.parse([*REQUIRED, *flags])
        return ours, options.settings_from_options(ours, model, labels)

    ours, s = settings()
    parsed = ("labels", "image_size", "artifacts", "faithfulness")  # given in another form
    for f in dataclasses.fields(Settings):  # every other option the workers read, as given
        if hasattr(ours, f.name) and f.name not in parsed:
            assert getattr(s, f.name) == getattr(ours, f.name), f.name
    assert (s.image_size, s.num_classes, s.channels) == (
        model.image_size,
        model.num_classes,
        model.channels,
    )
    assert (s.model_fingerprint, s.labels, s.faithfulness) == (
        model.fingerprint,
        labels,
        ("deletion", "insertion"),
    )
    assert (s.artifacts, s.expected_gradients_alpha) == (("masks", "overlays"), "random")
    base = Settings(
        model="m",
        output_dir="o",
        image_size=model.image_size,
        num_classes=model.num_classes,
        model_fingerprint=model.fingerprint,
        channels=model.channels,
        labels=labels,
    )
    assert s == base and s.settings_hash == base.settings_hash  # the defaults are the same
    _, s = settings("--attribution", "guided_ig", "--tolerance", "0", "--write_raw")
    assert (s.steps, s.max_steps, s.tolerance) == (GUIDED_STEPS, 256, None)
    assert s.artifacts == ("masks", "overlays", "raw")
    _, s = settings("--attribution", "guided_ig", "--steps", "8", "--method", "riemann_trapezoid")
    assert (s.steps, s.expected_gradients_alpha) == (8, "quadrature")
    _, s = settings("--clip_percentile", "90", "--clip_high", "95", "--faithfulness", "none")
    assert (s.clip_percentile, s.faithfulness) == (95.0, ())
