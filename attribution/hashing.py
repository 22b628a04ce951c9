"""Content hashing in chunks: a file of any size is hashed without holding it in memory.

No TensorFlow and no Beam here: callers open the file with whatever filesystem they use
(``tf.io.gfile`` for a model's files, Beam's ``FileSystems`` for images) and pass the handle.
"""

from __future__ import annotations

import hashlib

CHUNK_BYTES = 1 << 20


def update(digest, stream, chunk_bytes: int = CHUNK_BYTES):
    """Feed everything ``stream.read`` returns into ``digest``; return ``digest``."""
    while chunk := stream.read(chunk_bytes):
        digest.update(chunk)
    return digest


def sha256_hex(stream) -> str:
    """The sha256 hex digest of what is left to read in ``stream``."""
    return update(hashlib.sha256(), stream).hexdigest()
