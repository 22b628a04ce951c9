"""Stable, unique, filesystem-safe image ids derived from the matched uri."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def image_id(uri: str) -> str:
    """``<readable stem>-<12 hex of sha1(uri)>``: the same uri always maps to the same id,
    different uris to different ids, and the id is one plain file name (no separators, no
    dots, ASCII only), so nothing written under it can leave the output folder."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    readable = _UNSAFE.sub("_", ascii_stem).strip("_-")[:48] or "image"
    return f"{readable}-{hashlib.sha1(uri.encode('utf-8')).hexdigest()[:12]}"
