"""--precision: a Keras model computes in bfloat16/float16 while scores and completeness stay
float32/float64; a SavedModel is refused with what to do."""

import numpy as np
import pytest

from attribution.integrated_gradients import IntegratedGradients, Request
from attribution.models import ModelLoadError, load_model
from tests.conftest import SIZE, tiny_cnn
from transforms.settings import Settings


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "m.keras"
    tiny_cnn(filters=8, activation="softplus", seed=1).save(path)
    return str(path)


def attribute(model, image):
    ig = IntegratedGradients(model.fn, image_size=model.image_size, steps=32, tolerance=None)
    return ig.attribute([Request(0, image, np.zeros_like(image))], "0")[0]


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_model_computes_in_half_and_stays_complete(keras_file, precision):
    image = np.random.default_rng(3).random((SIZE, SIZE, 3), dtype=np.float32)
    full = load_model(keras_file)
    half = load_model(keras_file, precision=precision)
    assert half.fingerprint == full.fingerprint  # the same files, computed differently
    x = image[None]
    full_scores = full.fn(x).numpy()
    half_scores = half.fn(x).numpy()
    assert half_scores.dtype == np.float32  # the engine always gets float32 scores
    assert not np.array_equal(full_scores, half_scores)  # really computed in 16 bits
    np.testing.assert_allclose(half_scores, full_scores, atol=0.05 * np.abs(full_scores).max())
    a, b = attribute(full, image), attribute(half, image)
    assert a.relative_completeness_error < 1e-3
    # the check itself is float64 on float32 scores: it measures the half-precision path
    assert b.completeness_error == pytest.approx(
        abs(float(b.attributions.astype(np.float64).sum()) - (b.target_score - b.baseline_score)),
        rel=1e-3,
        abs=1e-6,
    )
    assert b.relative_completeness_error < 0.1
    assert np.corrcoef(a.attributions.ravel(), b.attributions.ravel())[0, 1] > 0.95


def test_saved_model_refuses_mixed_precision_with_what_to_do(tiny_model):
    with pytest.raises(ModelLoadError, match="needs a .keras model"):
        load_model(tiny_model, precision="mixed_bfloat16")
    assert load_model(tiny_model, precision="float32").num_classes == 3


def test_unknown_precision_is_a_bad_argument(keras_file):
    with pytest.raises(ValueError, match="--precision must be one of"):
        load_model(keras_file, precision="float8")


def test_settings_hash_counts_precision_only_when_not_float32():
    base = {
        "model": "m",
        "output_dir": "o",
        "image_size": (8, 8),
        "num_classes": 3,
        "model_fingerprint": "f",
    }
    default = Settings(**base)
    assert Settings(**base, precision="float32").settings_hash == default.settings_hash
    assert Settings(**base, precision="mixed_bfloat16").settings_hash != default.settings_hash
