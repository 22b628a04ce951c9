"""load_model: every handle kind gives the original model's outputs and input gradients."""

import hashlib
import shutil
import socket
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from job_argv import job_argv

from attribution.models import LoadedModel, ModelLoadError, load_model

REPO = Path(__file__).resolve().parents[1]
HUB_HANDLE = "https://tfhub.dev/test/tiny/1"
KAGGLE_HANDLE = "https://www.kaggle.com/models/test/tiny/tensorFlow2/tiny/1"
LOGIT_BIAS = np.array([-2.0, -1.0, 0.5, 1.0, 3.0], np.float32)  # logits of a black image


def _classifier(spatial):
    inputs = keras.Input((spatial, spatial, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.Dropout(0.5)(x)  # would make outputs random if training=True leaked in
    x = keras.layers.Conv2D(6, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5)(x))


class _HubStyle(tf.Module):
    """A hub-style SavedModel: a traced ``__call__`` over float images."""

    def __init__(self, model, spatial):
        super().__init__()
        self.model = model
        self.__call__ = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[tf.TensorSpec([None, spatial, spatial, 3], tf.float32)],
        )


def _save_signature_only(model, path, outputs):
    """A SavedModel whose only endpoint is its serving_default signature."""
    module = tf.Module()
    module.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="images")])
    def serving(images):
        logits = module.model(images, training=False)
        both = {"logits": logits, "probabilities": tf.nn.softmax(logits)}
        return {name: both[name] for name in outputs}

    tf.saved_model.save(module, str(path), signatures={"serving_default": serving})


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("models")
    static = _classifier(8)
    dense = static.layers[-1]
    dense.bias.assign(LOGIT_BIAS)
    dynamic = _classifier(None)
    dynamic.set_weights(static.get_weights())

    static.save(root / "m.keras")
    static.export(str(root / "export"), verbose=False)
    tf.saved_model.save(_HubStyle(static, 8), str(root / "hub_static"))
    tf.saved_model.save(_HubStyle(dynamic, None), str(root / "hub_dynamic"))
    _save_signature_only(static, root / "sig_single", ["logits"])
    _save_signature_only(static, root / "sig_multi", ["logits", "probabilities"])
    return types.SimpleNamespace(root=root, static=static, dynamic=dynamic)


@pytest.fixture(scope="session")
def tf_keras_saved_model(models):
    """A tf-keras (Keras 2) SavedModel, the format of most TF Hub classifiers."""
    tf_keras = pytest.importorskip("tf_keras")
    model = tf_keras.Sequential(
        [
            tf_keras.Input((8, 8, 3)),
            tf_keras.layers.Conv2D(4, 3, activation="relu"),
            tf_keras.layers.Dropout(0.5),
            tf_keras.layers.Conv2D(6, 3, activation="relu"),
            tf_keras.layers.GlobalAveragePooling2D(),
            tf_keras.layers.Dense(5),
        ]
    )
    model.set_weights(models.static.get_weights())
    path = models.root / "tf_keras"
    model.save(str(path), save_format="tf")
    return str(path)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "tfhub_cache"
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    monkeypatch.delenv("TFHUB_MODEL_LOAD_FORMAT", raising=False)
    return cache


def _images(n=3, spatial=8, seed=1):
    return tf.constant(
        np.random.default_rng(seed).uniform(size=(n, spatial, spatial, 3)), tf.float32
    )


def _target_prob_gradient(fn, images, target=2):
    """The IG integrand: d softmax(fn(x))[target] / dx."""
    with tf.GradientTape() as tape:
        tape.watch(images)
        prob = tf.nn.softmax(fn(images))[:, target]
    return tape.gradient(prob, images)


def _assert_same_model(loaded, reference, images):
    scores = loaded.fn(images)
    assert scores.dtype == tf.float32 and scores.shape == (images.shape[0], 5)
    np.testing.assert_allclose(scores, reference(images, training=False), rtol=1e-5, atol=1e-5)
    grad = _target_prob_gradient(loaded.fn, images)
    want = _target_prob_gradient(lambda x: reference(x, training=False), images)
    assert np.abs(grad).max() > 0
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name, kind, image_size",
    [
        ("m.keras", "keras", None),
        ("export", "saved_model", None),
        ("hub_static", "saved_model", None),
        ("hub_dynamic", "saved_model", (8, 8)),
        ("sig_single", "saved_model", None),
    ],
)
def test_every_local_kind_matches_the_keras_model(models, name, kind, image_size):
    loaded = load_model(str(models.root / name), image_size=image_size)
    assert isinstance(loaded, LoadedModel)
    assert (loaded.kind, loaded.image_size, loaded.num_classes, loaded.output) == (
        kind,
        (8, 8),
        5,
        "logits",
    )
    _assert_same_model(loaded, models.static, _images())

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
    def graph_gradient(x):
        return _target_prob_gradient(loaded.fn, x)

    for n in (3, 1):  # a short last batch works in the same traced function
        images = _images(n, seed=n)
        np.testing.assert_allclose(
            graph_gradient(images), _target_prob_gradient(loaded.fn, images), atol=1e-6
        )


def test_tf_keras_saved_model_is_called_with_training_false(models, tf_keras_saved_model):
    loaded = load_model(tf_keras_saved_model)
    assert (loaded.kind, loaded.image_size, loaded.num_classes) == ("saved_model", (8, 8), 5)
    _assert_same_model(loaded, models.static, _images())


def test_dynamic_size_needs_image_size_and_runs_at_it(models):
    handle = str(models.root / "hub_dynamic")
    with pytest.raises(
        ModelLoadError,
        match=r"--image_size H,W is needed: the model's "
        r"signature has no static spatial size",
    ) as err:
        load_model(handle)
    assert handle in str(err.value)
    loaded = load_model(handle, image_size=(16, 12))
    assert loaded.image_size == (16, 12)
    images = tf.random.uniform((2, 16, 12, 3), seed=3)
    np.testing.assert_allclose(
        loaded.fn(images), models.dynamic(images, training=False), rtol=1e-5, atol=1e-5
    )


def test_image_size_that_contradicts_the_signature_is_refused(models):
    with pytest.raises(
        ModelLoadError,
        match=r"--image_size 16,16 does not match the model's "
        r"input size 8,8",
    ):
        load_model(str(models.root / "export"), image_size=(16, 16))
    assert load_model(str(models.root / "export"), image_size=(8, 8)).image_size == (8, 8)


def test_several_signature_outputs_need_output_key(models):
    handle = str(models.root / "sig_multi")
    with pytest.raises(ModelLoadError, match=r"several outputs.*\['logits', 'probabilities'\]"):
        load_model(handle)
    with pytest.raises(ModelLoadError, match=r"no output 'nope'.*\['logits', 'probabilities'\]"):
        load_model(handle, output_key="nope")
    loaded = load_model(handle, output_key="probabilities", model_output="probabilities")
    images = _images()
    np.testing.assert_allclose(
        loaded.fn(images), tf.nn.softmax(models.static(images)), rtol=1e-5, atol=1e-6
    )
    _assert_same_model(load_model(handle, output_key="logits"), models.static, images)


def test_output_key_on_a_keras_export_uses_its_signature(models):
    loaded = load_model(str(models.root / "export"), output_key="output_0")
    _assert_same_model(loaded, models.static, _images())
    with pytest.raises(ModelLoadError, match=r"single tensor; drop output_key"):
        load_model(str(models.root / "m.keras"), output_key="output_0")


def test_declared_probabilities_outside_unit_interval_are_refused(models):
    with pytest.raises(ModelLoadError, match=r"declare model_output='logits'"):
        load_model(str(models.root / "m.keras"), model_output="probabilities")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model_output": "softmax"},
        {"image_size": (0, 8)},
        {"image_size": (8,)},
        {"image_size": "8,8"},
        {"image_size": (8.5, 8)},
    ],
)
def test_bad_arguments_raise_value_error(models, kwargs):
    with pytest.raises(ValueError):
        load_model(str(models.root / "m.keras"), **kwargs)


def test_keras_file_with_lambda_is_refused_not_loaded_unsafely(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x))).save(path)
    with pytest.raises(ModelLoadError, match="unsafe Lambda deserialization refused") as err:
        load_model(str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("missing", None, "no such file or folder"),
        ("missing.keras", None, "no such file or folder"),
        ("empty", "folder", "not a SavedModel"),
        ("m.h5", b"x", "not a readable HDF5 Keras file"),
        ("m.txt", b"x", "not a .keras, .h5 or .hdf5 Keras file"),
        (
            "bad.keras",
            b"not a zip",
            r"keras.models.load_model\(safe_mode=True\) failed "
            r"\(ValueError: ",
        ),
    ],
)
def test_unloadable_handles_fail_fast_naming_the_handle(tmp_path, name, content, expected):
    path = tmp_path / name
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match=expected) as err:
        load_model(str(path))
    assert time.monotonic() - start < 5
    assert repr(str(path)) in str(err.value)


@pytest.mark.parametrize("handle", [HUB_HANDLE, KAGGLE_HANDLE])
def test_hub_handle_loads_offline_from_a_warm_cache(models, hub_cache, no_network, handle):
    # tensorflow_hub caches a URL handle in <TFHUB_CACHE_DIR>/<sha1(handle)>; a non-empty
    # folder there is a hit (the .descriptor.txt beside it is informational only).
    shutil.copytree(
        models.root / "hub_static", hub_cache / hashlib.sha1(handle.encode("utf8")).hexdigest()
    )
    loaded = load_model(handle)
    assert (loaded.handle, loaded.kind, loaded.image_size, loaded.num_classes) == (
        handle,
        "hub",
        (8, 8),
        5,
    )
    assert loaded.fingerprint == load_model(str(models.root / "hub_static")).fingerprint
    _assert_same_model(loaded, models.static, _images())


def test_hub_handle_with_a_cold_cache_and_no_network_fails_fast(hub_cache, no_network):
    start = time.monotonic()
    with pytest.raises(
        ModelLoadError,
        match=r"tensorflow_hub could not resolve it.*"
        r"TFHUB_CACHE_DIR",
    ) as err:
        load_model(HUB_HANDLE)
    assert time.monotonic() - start < 5
    assert repr(HUB_HANDLE) in str(err.value)


def test_non_local_filesystem_uris_load_like_local_ones(models):
    """gs:// goes through tf.io.gfile like any TF filesystem; ram:// exercises it offline."""
    prefix = f"ram://models-{uuid.uuid4().hex}"
    local = models.root / "export"
    for path in local.rglob("*"):
        target = f"{prefix}/export/{path.relative_to(local).as_posix()}"
        if path.is_dir():
            tf.io.gfile.makedirs(target)
        else:
            tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
            tf.io.gfile.copy(str(path), target)
    tf.io.gfile.copy(str(models.root / "m.keras"), f"{prefix}/m.keras")

    for name, kind in (("export", "saved_model"), ("m.keras", "keras")):
        remote = load_model(f"{prefix}/{name}")
        assert remote.kind == kind
        assert remote.fingerprint == load_model(str(models.root / name)).fingerprint
        _assert_same_model(remote, models.static, _images())
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_model(f"{prefix}/missing")


def test_fingerprint_is_a_function_of_the_model_files(models, tmp_path):
    keras_file = models.root / "m.keras"
    assert (
        load_model(str(keras_file)).fingerprint
        == hashlib.sha256(keras_file.read_bytes()).hexdigest()
    )

    first = load_model(str(models.root / "export")).fingerprint
    assert len(first) == 64 and int(first, 16) >= 0
    assert load_model(str(models.root / "export")).fingerprint == first
    shutil.copytree(models.root / "export", tmp_path / "copy")
    assert load_model(str(tmp_path / "copy")).fingerprint == first
    assert load_model(str(models.root / "sig_single")).fingerprint != first

    code = (
        "import sys; from attribution.models import load_model; "
        "print(load_model(sys.argv[1]).fingerprint)"
    )
    other_process = subprocess.run(
        [sys.executable, "-c", code, str(models.root / "export")],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    assert other_process.stdout.strip().splitlines()[-1] == first


# -- legacy .h5 / .hdf5 Keras files --------------------------------------------------------


def _lambda_h5(tmp_path, marker: Path, name: str = "lambda.h5") -> Path:
    """A .h5 whose Lambda layer, if ever run, would create ``marker``."""
    code = f"lambda t: (__import__('pathlib').Path({str(marker)!r}).touch(), t)[1]"
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(eval(code), output_shape=(8, 8, 3))(inputs)  # noqa: S307
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    marker.unlink(missing_ok=True)  # building the model above ran it once
    path = tmp_path / name
    model.save(path)
    marker.unlink(missing_ok=True)
    return path


def _as_keras2_lambda(path: Path) -> None:
    """Rewrite the Lambda config the way Keras 2 stored it: marshalled bytecode in a list."""
    import json

    import h5py

    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Lambda":
                code = layer["config"]["function"]["config"]["code"]
                layer["config"].update(
                    function=[code, None, None],
                    function_type="lambda",
                    output_shape=[8, 8, 3],
                    output_shape_type="raw",
                )
        f.attrs["model_config"] = json.dumps(config)


@pytest.mark.parametrize("suffix", [".h5", ".hdf5"])
def test_legacy_h5_file_loads_like_the_model(tmp_path, suffix):
    keras.utils.set_random_seed(3)
    model = _classifier(8)
    path = tmp_path / f"m{suffix}"
    model.save(path)
    loaded = load_model(str(path))
    assert (loaded.kind, loaded.image_size, loaded.num_classes, loaded.channels) == (
        "h5",
        (8, 8),
        5,
        3,
    )
    images = np.random.default_rng(0).random((2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(
        loaded.fn(images).numpy(), model(images, training=False), rtol=1e-5, atol=1e-6
    )
    assert loaded.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("keras2_style", [False, True])
def test_h5_with_a_lambda_layer_is_refused_and_its_code_never_runs(tmp_path, keras2_style):
    marker = tmp_path / "lambda-ran"
    path = _lambda_h5(tmp_path, marker)
    if keras2_style:
        _as_keras2_lambda(path)
    from keras.src.saving.serialization_lib import SafeModeScope

    with SafeModeScope(False):  # even in a process where unsafe loading was turned on
        with pytest.raises(ModelLoadError, match="unsafe Lambda deserialization refused") as err:
            load_model(str(path))
    assert str(path) in str(err.value) and "Lambda layers ['lambda" in str(err.value)
    assert not marker.exists()


def test_h5_lambda_through_the_cli_exits_3_before_reading_images(tmp_path):
    marker = tmp_path / "lambda-ran"
    path = _lambda_h5(tmp_path, marker)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "x.png").write_bytes(b"not read")
    from pipeline import run as job

    code = job.main(
        [
            *job_argv(f"{folder}/*", str(tmp_path / "out"), str(path)),
        ]
    )
    assert code == 3 and not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("channels", [2, 4])
def test_models_with_other_than_1_or_3_channels_are_refused(tmp_path, channels):
    inputs = keras.Input((8, 8, channels))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    path = tmp_path / f"c{channels}.keras"
    keras.Model(inputs, keras.layers.Dense(2)(x)).save(path)
    with pytest.raises(
        ModelLoadError,
        match=f"takes {channels}-channel input .*only "
        r"3-channel \(RGB\) and 1-channel",
    ):
        load_model(str(path))
