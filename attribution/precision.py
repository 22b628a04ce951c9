"""The model's compute precision: float32, or Keras mixed precision (bfloat16 / float16 compute,
float32 variables). Only a Keras model can be re-built in another precision: a SavedModel's
graph has its dtypes fixed when it was exported. Whatever the model computes in, the engine
takes its scores as float32 and checks completeness in float64.
"""

from __future__ import annotations

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


class PrecisionError(ValueError):
    """This model cannot compute in the asked precision; the message says what to do."""


def check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def keras_in_precision(model, precision: str):
    """``model`` itself for float32, else a copy whose every layer has the mixed policy
    ``precision`` (compute in bfloat16/float16, variables float32) and the same weights."""
    import keras

    if check(precision) == "float32":
        return model

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = keras.DTypePolicy(precision)
        return layer.__class__.from_config(config)

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
    except Exception as exc:  # noqa: BLE001 - subclassed models cannot be cloned
        raise PrecisionError(
            f"--precision {precision}: this Keras model could not be re-built "
            f"layer by layer ({type(exc).__name__}: {exc}); use --precision "
            "float32, or save it with keras.mixed_precision.set_global_policy("
            f"'{precision}') set before building it"
        ) from exc
    copy.set_weights(model.get_weights())
    return copy


def saved_model_refusal(precision: str) -> PrecisionError:
    return PrecisionError(
        f"--precision {precision} needs a .keras model: a SavedModel's graph computes in the "
        "dtypes it was exported with. Pass the .keras file, or export the SavedModel from a "
        f"model built under keras.mixed_precision.set_global_policy('{precision}') and run it "
        "with --precision float32"
    )
