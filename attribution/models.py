"""Load an image classifier from any handle the contract names, as one differentiable callable.

Handles: a local or ``gs://`` TF2 SavedModel folder (hub-style ``__call__``, serving
signatures, Keras 3 ``model.export()``), a ``.keras`` file or a legacy ``.h5`` / ``.hdf5``
Keras file (safe mode only: Python code such as a ``Lambda`` layer is refused, never run),
and TF Hub / Kaggle URLs (through tensorflow_hub's resolver and its ``TFHUB_CACHE_DIR`` cache).
The number of input channels is read from the model's signature: 3 (RGB) or 1 (grayscale).
``hub.KerasLayer`` is never used: it fails inside Keras 3 on TF 2.16+.
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from attribution import hashing
from attribution.config import MODEL_OUTPUTS
from attribution.images import CHANNELS
from attribution.precision import PrecisionError, keras_in_precision, saved_model_refusal
from attribution.precision import check as precision_check
from attribution.preprocessing import PREPROCESS, preprocessor

_log = logging.getLogger(__name__)

_HUB_PREFIXES = ("http://", "https://")
_H5_SUFFIXES = (".h5", ".hdf5")
# The last loads of this process, by handle, file fingerprint and arguments: an in-process
# worker (DirectRunner in_memory) gets the model the launcher loaded to fail fast, instead of
# loading it again (measured: 0.3-0.9 s of a 1-image job on the small CNN).
_RECENT: dict[tuple, "LoadedModel"] = {}
_RECENT_SIZE = 2


class ModelLoadError(Exception):
    """The model could not be loaded; the message names the handle and what was tried."""


@dataclass(frozen=True)
class LoadedModel:
    """A loaded classifier.

    ``fn`` maps float32 images [N, H, W, channels] in [0, 1] to float32 scores [N, C],
    ``preprocess`` (see attribution.preprocessing) included; it is differentiable w.r.t. its
    input and callable eagerly, under ``tf.GradientTape`` and inside a ``tf.function``.
    ``kind`` says how the handle was loaded: 'saved_model' (a folder), 'keras' (a .keras
    file), 'h5' (a legacy .h5 / .hdf5 Keras file) or 'hub' (a URL resolved by
    tensorflow_hub). ``channels`` is 3 (RGB) or 1 (grayscale), from the model's signature.
    ``fingerprint`` is a sha256 of the model's files, so it is the same for the same files in
    any process.
    """

    handle: str
    kind: str
    fn: Callable[[tf.Tensor], tf.Tensor]
    image_size: tuple[int, int]
    num_classes: int
    output: str
    fingerprint: str
    channels: int = 3
    preprocess: str = "none"
    # the model's variables in layer order (.keras: model.weights; SavedModel: the restored
    # object's `variables`), what attribution.randomization re-initialises
    variables: tuple = field(default=(), repr=False, compare=False)
    # Keras models only (None for a SavedModel or hub handle, whose layers cannot be reached):
    # ``features(layer)(images) -> (the layer's activations, [N, C] scores)``, preprocess
    # included, for Grad-CAM; ``layers`` names the layers with a 4-D output, in model order.
    features: Callable[[str], Callable] | None = field(default=None, repr=False, compare=False)
    layers: tuple[str, ...] = ()


def load_model(
    handle: str,
    *,
    image_size: tuple[int, int] | None = None,
    model_output: str = "logits",
    output_key: str | None = None,
    preprocess: str = "none",
    precision: str = "float32",
    reuse: bool = True,
) -> LoadedModel:
    """Load ``handle`` and check it maps [N, H, W, 3 or 1] float32 images to [N, C] scores.

    ``image_size`` (H, W) is needed only when the model's signature has no static spatial
    size. ``model_output`` declares what the model returns ('logits' or 'probabilities').
    ``output_key`` picks one output of a model with several (e.g. a signature output name).
    ``preprocess`` names the transform from [0, 1] pixels to what the model was trained on
    (attribution.preprocessing.PREPROCESS); it becomes part of ``fn``.
    ``precision`` (attribution.precision): what a Keras model computes in; a SavedModel is
    refused anything but float32.
    ``reuse``: return this process's recent load of the same files and arguments (the launcher's
    model serves an in-process worker); False for a private copy whose variables the caller
    changes (the sanity check randomizes them in place).
    Raises ValueError for bad arguments and ModelLoadError when the model cannot be used.
    """
    if not isinstance(handle, str) or not handle.strip():
        raise ValueError(f"model handle must be a non-empty string, got {handle!r}")
    if model_output not in MODEL_OUTPUTS:
        raise ValueError(f"model_output must be one of {MODEL_OUTPUTS}, got {model_output!r}")
    if preprocess not in PREPROCESS:
        raise ValueError(f"preprocess must be one of {PREPROCESS}, got {preprocess!r}")
    if image_size is not None:
        image_size = _check_image_size(image_size)

    if handle.startswith(_HUB_PREFIXES):
        kind, path = "hub", _resolve_hub(handle)
    else:
        kind, path = _local_kind(handle), handle
    fingerprint = _fingerprint(handle, path, kind)
    key = (handle, kind, fingerprint, model_output, output_key, preprocess, precision)
    recent = _RECENT.get(key) if reuse else None  # the same files, loaded the same way
    if recent is not None and image_size in (None, recent.image_size):
        return recent
    if kind in ("keras", "h5"):
        call, spec, output_names = _load_keras(handle, path, kind, precision)
    elif precision_check(precision) != "float32":
        raise _error(handle, str(saved_model_refusal(precision)))
    else:
        call, spec, output_names = _load_saved_model(handle, path, output_key)

    size = _input_size(handle, spec, image_size)
    channels = _input_channels(handle, spec)
    try:
        transform = preprocessor(preprocess, channels)
    except ValueError as exc:
        raise _error(handle, str(exc)) from None
    fn, num_classes, select = _make_fn(
        handle,
        lambda images: call(transform(images)),
        size,
        channels,
        output_key,
        output_names,
        model_output,
    )
    keras_model = getattr(call, "keras_model", None)
    features = layers = None
    if keras_model is not None:
        features, layers = _layer_access(keras_model, transform, select)
    loaded = LoadedModel(
        handle=handle,
        kind=kind,
        fn=fn,
        image_size=size,
        num_classes=num_classes,
        output=model_output,
        fingerprint=fingerprint,
        channels=channels,
        preprocess=preprocess,
        variables=tuple(getattr(call, "variables", ())),
        features=features,
        layers=layers or (),
    )
    if not reuse:
        return loaded
    _RECENT[key] = loaded
    while len(_RECENT) > _RECENT_SIZE:
        _RECENT.pop(next(iter(_RECENT)))
    return loaded


def _error(handle: str, what: str, exc: BaseException | None = None) -> ModelLoadError:
    detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return ModelLoadError(f"cannot load model {handle!r}: {what}{detail}")


def _check_image_size(image_size) -> tuple[int, int]:
    values = tuple(image_size) if isinstance(image_size, (tuple, list)) else ()
    if len(values) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise ValueError(f"image_size must be two positive integers (H, W), got {image_size!r}")
    return int(values[0]), int(values[1])


def _resolve_hub(handle: str) -> str:
    """The local folder tensorflow_hub resolves ``handle`` to (downloading on a cold cache)."""
    import tensorflow_hub as hub  # imported here: only URL handles need it
    from tensorflow_hub import resolver

    try:
        return hub.resolve(handle)
    except Exception as exc:  # noqa: BLE001 - network, HTTP and archive errors all end here
        folder = posixpath.join(
            resolver.tfhub_cache_dir(use_temp=True), hashlib.sha1(handle.encode("utf8")).hexdigest()
        )
        raise _error(
            handle,
            f"tensorflow_hub could not resolve it (tried the cache folder "
            f"{folder}, then a download); offline, pre-populate "
            "TFHUB_CACHE_DIR from a machine with network access",
            exc,
        ) from exc


def _local_kind(handle: str) -> str:
    try:
        exists = tf.io.gfile.exists(handle)
        is_dir = exists and tf.io.gfile.isdir(handle)
    except tf.errors.OpError as exc:
        raise _error(handle, "tf.io.gfile could not read it", exc) from exc
    if not exists:
        raise _error(
            handle,
            "no such file or folder (expected a SavedModel folder, a .keras "
            "or .h5 file, or a TF Hub / Kaggle URL)",
        )
    if is_dir:
        return "saved_model"
    if handle.endswith(".keras"):
        return "keras"
    if handle.lower().endswith(_H5_SUFFIXES):
        return "h5"
    raise _error(
        handle,
        "it is a file but not a .keras, .h5 or .hdf5 Keras file (expected a "
        "SavedModel folder or a Keras model file)",
    )


def _load_keras(handle: str, path: str, kind: str = "keras", precision: str = "float32"):
    if kind == "h5":
        _refuse_h5_code(handle, path)
    try:
        model = keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for bad files
        if "safe_mode" in str(exc):
            raise _error(
                handle,
                "unsafe Lambda deserialization refused: the .keras file holds "
                "Python code (e.g. a Lambda layer) that only loads with "
                "safe_mode=False; re-save it without Python lambdas or export "
                "a SavedModel with model.export(dir)",
                exc,
            ) from exc
        raise _error(handle, "keras.models.load_model(safe_mode=True) failed", exc) from exc
    if len(model.inputs) != 1:
        raise _error(
            handle, f"the Keras model has {len(model.inputs)} inputs; one image input is needed"
        )
    spec = tf.TensorSpec(model.inputs[0].shape, model.inputs[0].dtype)
    try:
        model = keras_in_precision(model, precision)
    except PrecisionError as exc:
        raise _error(handle, str(exc)) from exc

    def call(images):
        return model(images, training=False)

    call.variables = tuple(model.weights)
    call.keras_model = model  # its layers: Grad-CAM (see _layer_access)
    return call, spec, list(getattr(model, "output_names", None) or [])


def _layer_access(model, transform, select):
    """(features, names of the top-level layers with a 4-D output) of a Keras model.

    ``features(name)`` is ``images -> (activations of that layer, scores)``: one Keras model
    from the input to both outputs, so the activations are the ones the scores are computed
    from (what Grad-CAM differentiates). A Sequential model is first re-traced as a
    functional graph on a new input (same layers, same weights): the gradient of its output
    with respect to a layer's ``output`` is None in Keras 3. Layers inside a nested model
    are not reachable."""
    names = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue  # the image itself: no activations to weigh
        try:
            output = layer.output
        except (AttributeError, ValueError):  # a layer used twice, or never called
            continue
        if not isinstance(output, (list, tuple, dict)) and len(output.shape) == 4:
            names.append(layer.name)

    def graph():
        """(input, {layer name: its output}, outputs) of a graph the gradient flows through."""
        if not isinstance(model, keras.Sequential):
            tensors = {name: model.get_layer(name).output for name in names}
            return model.inputs[0], tensors, model.outputs  # one image input (checked)
        spec = model.inputs[0]
        inputs = keras.Input(tuple(spec.shape[1:]), dtype=spec.dtype)
        x, tensors = inputs, {}
        for layer in model.layers:
            x = tensors[layer.name] = layer(x)
        return inputs, tensors, [x]

    def features(name: str):
        inputs, tensors, final = graph()
        inner = keras.Model(inputs, [tensors[name], final])

        def fn(images):
            activations, outputs = inner(transform(tf.cast(images, tf.float32)), training=False)
            outputs = outputs[0] if len(outputs) == 1 else outputs
            return activations, tf.cast(select(outputs), tf.float32)

        return fn

    return features, tuple(names)


def _refuse_h5_code(handle: str, path: str) -> None:
    """Refuse a legacy .h5 whose config holds Python code, before Keras builds anything.

    Keras 3's legacy loader also refuses such a ``Lambda`` in safe mode, but only in the form
    it converts; Keras 2 files store the code as marshalled bytecode in several forms. Any
    ``Lambda`` whose function (or output_shape) is code rather than a registered name is
    refused here, whichever Keras wrote it.
    """
    import h5py  # a Keras dependency; imported here: only .h5 files need it

    try:
        with tf.io.gfile.GFile(path, "rb") as f, h5py.File(f, "r") as h5:
            config = h5.attrs.get("model_config")
    except Exception as exc:  # noqa: BLE001 - not HDF5, truncated, unreadable
        raise _error(handle, "it is not a readable HDF5 Keras file", exc) from exc
    if config is None:
        raise _error(
            handle,
            "the .h5 file holds no model config (a weights-only file?); "
            "load the architecture in code and save a .keras file",
        )
    if isinstance(config, bytes):
        config = config.decode("utf-8")
    try:
        tree = json.loads(config)
    except ValueError as exc:
        raise _error(handle, "its model config is not valid JSON", exc) from exc
    lambdas = sorted(_python_code_layers(tree))
    if lambdas:
        raise _error(
            handle,
            f"unsafe Lambda deserialization refused: the .h5 file holds Python "
            f"code (Lambda layers {lambdas}) that only loads with "
            "safe_mode=False and would run on load; rebuild the model without "
            "Python lambdas or export a SavedModel with model.export(dir)",
        )


def _python_code_layers(node) -> list[str]:
    """Names of Lambda layers in a Keras config tree whose function is Python code."""
    found = []
    if isinstance(node, dict):
        config = node.get("config")
        if node.get("class_name") == "Lambda" and isinstance(config, dict):
            code = (
                any(_is_code(config.get(key)) for key in ("function", "output_shape"))
                or config.get("function_type") == "lambda"
                or config.get("output_shape_type") == "lambda"
            )
            if code:
                found.append(str(config.get("name", "?")))
        for value in node.values():
            found.extend(_python_code_layers(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_python_code_layers(value))
    return found


def _is_code(value) -> bool:
    """A serialized Python function: Keras 3's ``__lambda__`` dict or Keras 2's bytecode list."""
    if isinstance(value, dict):
        return value.get("class_name") == "__lambda__"
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and isinstance(value[0], str)
        and len(value) == 3
    )


def _load_saved_model(handle: str, path: str, output_key: str | None):
    """Pick an endpoint: Keras-export ``serve``, hub-style ``__call__``, serving signature."""
    if not tf.saved_model.contains_saved_model(path):
        raise _error(handle, f"not a SavedModel: {path!r} has no saved_model.pb")
    if tf.io.gfile.exists(posixpath.join(path, "tfhub_module.pb")):
        raise _error(handle, "it is in the TF1 Hub format; use a TF2 SavedModel version of it")
    try:
        obj = tf.saved_model.load(path)
    except Exception as exc:  # noqa: BLE001 - TF raises op errors and Python errors here
        raise _error(handle, f"tf.saved_model.load({path!r}) failed", exc) from exc

    signatures = dict(getattr(obj, "signatures", None) or {})
    signature = signatures.get("serving_default")
    if signature is None and len(signatures) == 1:
        signature = next(iter(signatures.values()))
    serve = getattr(obj, "serve", None) if callable(getattr(obj, "serve", None)) else None
    hub_call = getattr(obj, "__call__", None) if callable(obj) else None
    # Without output_key the plain callables come first: they return the bare tensor.
    # With it, the signature comes first: its outputs are the named ones.
    order = [("serve", serve), ("__call__", hub_call), ("signature", signature)]
    if output_key is not None:
        order.insert(0, order.pop())
    name, endpoint = next(((n, e) for n, e in order if e is not None), (None, None))
    if endpoint is not None:
        make = _signature_call if name == "signature" else _function_call
        output_names = sorted(signature.structured_outputs) if signature is not None else []
        return (*make(handle, obj, endpoint), output_names)
    raise _error(
        handle,
        "the SavedModel has no serving endpoint: no `serve` function, no "
        "callable object and no serving_default signature "
        f"(signatures: {sorted(signatures)})",
    )


def _function_call(handle: str, obj, function):
    """Call a restored tf.function (``serve`` or ``__call__``); training=False if it has it."""
    specs = []
    if getattr(function, "input_signature", None):
        specs.append(function.input_signature[0])
    for concrete in getattr(function, "concrete_functions", []):
        args = concrete.structured_input_signature[0]
        if args:
            specs.append(args[0])
    if not specs or not all(isinstance(s, tf.TensorSpec) for s in specs):
        raise _error(handle, "its callable does not take a single image tensor")
    shape = specs[0].shape
    for other in specs[1:]:  # e.g. traces for training=True/False: keep what they share
        shape = shape.most_specific_compatible_shape(other.shape)
    spec = tf.TensorSpec(shape, specs[0].dtype)
    try:
        takes_training = "training" in function.function_type.parameters
    except AttributeError:
        takes_training = False

    def call(images, _obj=obj):  # _obj keeps the restored variables alive
        return function(images, training=False) if takes_training else function(images)

    call.variables = tuple(getattr(obj, "variables", ()))
    return call, spec


def _signature_call(handle: str, obj, signature):
    inputs = signature.structured_input_signature[1]
    if len(inputs) != 1:
        raise _error(
            handle,
            f"its serving signature takes {len(inputs)} inputs "
            f"{sorted(inputs)}; one image input is needed",
        )
    ((name, spec),) = inputs.items()

    def call(images, _obj=obj):  # _obj keeps the restored variables alive
        return signature(**{name: images})

    call.variables = tuple(getattr(obj, "variables", ()))
    return call, spec


def _input_channels(handle: str, spec: tf.TensorSpec) -> int:
    """3 (RGB) or 1 (grayscale) from the signature; an unknown channel count is taken as RGB."""
    shape = tf.TensorShape(spec.shape)
    channels = 3 if shape.rank is None or shape[3] is None else int(shape[3])
    if channels not in CHANNELS:
        raise _error(
            handle,
            f"the model takes {channels}-channel input (shape {shape}); "
            "only 3-channel (RGB) and 1-channel (grayscale) image models are "
            "supported: wrap the model so it takes [N, H, W, 3] or "
            "[N, H, W, 1] images in [0, 1]",
        )
    return channels


def _input_size(handle: str, spec: tf.TensorSpec, image_size: tuple[int, int] | None):
    shape = tf.TensorShape(spec.shape)
    if spec.dtype != tf.float32:
        raise _error(
            handle, f"the model takes {spec.dtype.name} input; float32 images in [0, 1] are needed"
        )
    if shape.rank is not None and shape.rank != 4:
        raise _error(
            handle,
            f"the model takes input of shape {shape}; [N, H, W, 3] or "
            "[N, H, W, 1] images are needed",
        )
    static = (None, None) if shape.rank is None else (shape[1], shape[2])
    if None not in static:
        if image_size is not None and tuple(image_size) != static:
            raise _error(
                handle,
                f"--image_size {image_size[0]},{image_size[1]} does not match "
                f"the model's input size {static[0]},{static[1]}: drop "
                "--image_size or pass the model's size",
            )
        return static
    if image_size is None:
        raise _error(
            handle,
            "--image_size H,W is needed: the model's signature has no static "
            f"spatial size (input shape {shape})",
        )
    if any(s is not None and s != v for s, v in zip(static, image_size)):
        raise _error(
            handle,
            f"--image_size {image_size[0]},{image_size[1]} does not match "
            f"the model's input shape {shape}",
        )
    return image_size


def _make_fn(handle, call, size, channels, output_key, output_names, model_output):
    """Probe ``call`` on zeros, choose its output, and wrap it as float32 -> float32 [N, C]."""
    height, width = size
    try:
        probe = call(tf.zeros([1, height, width, channels], tf.float32))
    except Exception as exc:  # noqa: BLE001 - any failure of the model itself
        raise _error(
            handle, f"a forward pass on zeros [1, {height}, {width}, {channels}] failed", exc
        ) from exc
    select = _output_selector(handle, probe, output_key, output_names)
    scores = select(probe)
    if scores.shape.rank != 2 or scores.shape[0] != 1:
        raise _error(
            handle,
            f"the model returns shape {scores.shape} for one image; class scores [N, C] are needed",
        )
    values = np.asarray(scores, np.float64)
    if not np.all(np.isfinite(values)):
        raise _error(
            handle,
            f"its scores for a black image [1, {height}, {width}, {channels}] are not all "
            f"finite ({int(np.sum(np.isnan(values)))} NaN, {int(np.sum(np.isinf(values)))} "
            f"infinite of {values.size}): no attribution of it could be trusted",
        )
    _check_declared_output(handle, values, model_output)

    def fn(images):
        return tf.cast(select(call(tf.cast(images, tf.float32))), tf.float32)

    return fn, int(scores.shape[1]), select


def _output_selector(handle, probe, output_key, output_names) -> Callable:
    if isinstance(probe, Mapping):
        keys = sorted(probe)
        if output_key is None and len(keys) == 1:
            output_key = keys[0]
        if output_key not in probe:
            what = "has several outputs" if output_key is None else f"has no output {output_key!r}"
            raise _error(handle, f"the model {what}; pass output_key, one of {keys}")
        return lambda outputs: outputs[output_key]
    if isinstance(probe, Sequence) and not isinstance(probe, str):
        if output_key is None and len(probe) == 1:
            return lambda outputs: outputs[0]
        if (
            output_key is not None
            and output_key in output_names
            and len(output_names) == len(probe)
        ):
            index = output_names.index(output_key)
            return lambda outputs: outputs[index]
        raise _error(
            handle,
            f"the model returns {len(probe)} outputs; pass output_key, "
            f"one of {output_names or 'its output names'}",
        )
    if output_key is not None:
        raise _error(
            handle,
            f"output_key {output_key!r} was given but the model returns a "
            "single tensor; drop output_key",
        )
    return lambda outputs: outputs


def _check_declared_output(handle: str, scores: np.ndarray, model_output: str) -> None:
    """Refuse 'probabilities' outside [0, 1]; warn when 'logits' look like a softmax."""
    in_unit = bool(np.all(scores >= -1e-6) and np.all(scores <= 1 + 1e-6))
    if model_output == "probabilities" and not in_unit:
        raise _error(
            handle,
            "model_output='probabilities' was declared but the scores of a "
            f"black image span [{scores.min():.4g}, {scores.max():.4g}]; "
            "declare model_output='logits'",
        )
    if (
        model_output == "logits"
        and in_unit
        and scores.shape[1] > 1
        and abs(scores.sum() - 1) < 1e-4
    ):
        _log.warning(
            "Model %r was declared to return logits but its scores sum to 1 like "
            "probabilities; pass model_output='probabilities' if they are.",
            handle,
        )


def _fingerprint(handle: str, path: str, kind: str) -> str:
    """sha256 of a .keras file's bytes, or of a SavedModel's graph, variables and assets."""
    digest = hashlib.sha256()
    try:
        if kind in ("keras", "h5"):
            _hash_file(digest, path)
            return digest.hexdigest()
        root = path.rstrip("/")
        files = [
            name
            for name in ("saved_model.pb", "saved_model.pbtxt")
            if tf.io.gfile.exists(posixpath.join(root, name))
        ]
        for sub in ("variables", "assets"):
            top = posixpath.join(root, sub)
            if not tf.io.gfile.isdir(top):
                continue
            for dirpath, _, filenames in tf.io.gfile.walk(top):
                rel_dir = posixpath.normpath(dirpath[len(root) :].lstrip("/"))
                files.extend(posixpath.join(rel_dir, f) for f in filenames)
        for rel in sorted(files):
            full = posixpath.join(root, rel)
            digest.update(f"{rel}\0{tf.io.gfile.stat(full).length}\0".encode())
            _hash_file(digest, full)
    except tf.errors.OpError as exc:
        raise _error(handle, "reading its files for the fingerprint failed", exc) from exc
    return digest.hexdigest()


def _hash_file(digest, path: str) -> None:
    with tf.io.gfile.GFile(path, "rb") as f:
        hashing.update(digest, f)
