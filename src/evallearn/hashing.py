"""Canonical JSON and the short content hashes that name run folders, images and cache entries.

A leaf: the config, the generation requests and the caches all hash through here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical(obj: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def short_hash(obj: Any, n: int = 12) -> str:
    """The first ``n`` hex digits of the SHA-256 of :func:`canonical` ``obj``."""
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:n]
