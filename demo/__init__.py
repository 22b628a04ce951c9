"""The offline demo: a generated shapes dataset with a planted shortcut, and a small CNN that
learns it. Importing this package does not import TensorFlow."""

from demo.dataset import CLASSES, CUE_BOX, CUE_CLASS, IMAGE_SIZE, SPLITS, generate, make_arrays
from demo.model import train_or_load

__all__ = [
    "CLASSES",
    "CUE_BOX",
    "CUE_CLASS",
    "IMAGE_SIZE",
    "SPLITS",
    "generate",
    "make_arrays",
    "train_or_load",
]
