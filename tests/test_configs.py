"""Every profile in configs/ parses, and names only options that exist."""

import glob
import os

import pytest
import yaml

from pipeline import options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
REQUIRED = ["--input_pattern", "x/*.png", "--output_dir", "out", "--model", "m"]


def test_the_issue_profiles_exist():
    names = {os.path.basename(p) for p in PROFILES}
    assert {"laptop.yaml", "dataflow.yaml", "dataflow-gpu.yaml", "audit.yaml"} <= names


@pytest.mark.parametrize("path", PROFILES, ids=os.path.basename)
def test_profile_parses_and_every_key_is_a_known_option(path):
    ours, beam_options = options.parse(["--config", path, *REQUIRED])
    known = set(vars(ours)) | set(beam_options.get_all_options())
    with open(path) as f:
        keys = set(yaml.safe_load(f))
    assert not keys - known, f"unknown options in {path}: {keys - known}"


def test_flags_override_the_profile(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("steps: 8\nmethod: riemann_middle\nwrite_raw: true\nexperiments: [a, b]\n")
    ours, beam_options = options.parse(["--config", str(profile), *REQUIRED, "--steps", "3"])
    assert (ours.steps, ours.method, ours.write_raw) == (3, "riemann_middle", True)
    assert beam_options.get_all_options()["experiments"] == ["a", "b"]


@pytest.mark.parametrize("text,message", [("- a\n- b\n", "mapping"), ("steps: [\n", "YAML")])
def test_bad_profiles_say_what_is_wrong(tmp_path, text, message):
    profile = tmp_path / "bad.yaml"
    profile.write_text(text)
    with pytest.raises(options.UsageError, match=message):
        options.parse(["--config", str(profile), *REQUIRED])
    with pytest.raises(options.UsageError, match="cannot read"):
        options.parse(["--config", str(tmp_path / "missing.yaml"), *REQUIRED])
