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
from pipeline import options
from transforms.settings import Settings

FIELDS = dataclasses.fields(AttributionConfig)


def test_every_field_is_an_option_with_its_default_choices_and_help():
    actions = {a.dest: a for a in options.help_parser()._actions}
    for f in FIELDS:
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
