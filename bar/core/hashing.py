"""Stable short hashes of plain values: the identities of points, cached artifacts and reference features."""

from __future__ import annotations

import hashlib
import json


def stable_hash(value, length: int = 12) -> str:
    """SHA-256 of `value` as sorted JSON (anything else as its str), cut to `length` hex digits."""
    blob = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
