"""settings_hash: computed once per Settings value, and the same value as before it was cached
(so runs made earlier are still reused by --reuse_from)."""

import dataclasses
import pickle

from transforms.settings import Settings

LABELS = tuple(f"class {i}" for i in range(1001))


def settings(**changes) -> Settings:
    base = Settings(
        model="m",
        output_dir="/out",
        image_size=(224, 224),
        num_classes=1001,
        model_fingerprint="f" * 64,
        labels=LABELS,
    )
    return dataclasses.replace(base, **changes)


def test_settings_hash_is_stable_and_ignores_labels():
    # The value a run of the previous code recorded for these settings.
    assert settings().settings_hash == "b01a0c46b43c0795"
    assert settings(labels=()).settings_hash == settings().settings_hash
    assert settings(steps=32).settings_hash != settings().settings_hash
    assert settings(image_size=(112, 112)).settings_hash != settings().settings_hash


def test_settings_hash_is_computed_once_and_travels_with_the_value():
    s = settings()
    assert "settings_hash" not in vars(s)
    first = s.settings_hash
    assert vars(s)["settings_hash"] == first  # cached on the value, not recomputed per row
    copy = pickle.loads(pickle.dumps(s))  # what a worker receives
    assert vars(copy)["settings_hash"] == first and copy == s


def test_a_changed_rule_changes_the_hash_of_its_runs_only(monkeypatch):
    from attribution import quadrature

    guided = settings(method="score_guided", steps=9).settings_hash
    assert quadrature.RULE_VERSIONS["score_guided"] >= 1
    monkeypatch.setattr(quadrature, "RULE_VERSIONS", {})
    unversioned = settings(method="score_guided", steps=9).settings_hash
    plain = settings().settings_hash
    # rows of score_guided's first placement (made before versions) are not this run's
    assert guided != unversioned
    monkeypatch.setattr(quadrature, "RULE_VERSIONS", {"score_guided": 2})
    assert settings(method="score_guided", steps=9).settings_hash not in (guided, unversioned)
    # a rule that never changed (the default gausslegendre) keeps the hash runs made before
    # versions recorded, whatever version another rule is at
    monkeypatch.setattr(quadrature, "RULE_VERSIONS", {"riemann_trapezoid": 3})
    assert settings().settings_hash == "b01a0c46b43c0795" == plain
    assert settings(method="score_guided", steps=9).settings_hash == unversioned
