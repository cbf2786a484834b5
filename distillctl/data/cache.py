"""Where distillctl keeps what it can rebuild: ``$DISTILLCTL_CACHE``, else the platform's user cache folder.

Layout (every stage finds its folder here, so no stage imports another for a path)::

    <root>/embeddings/<key[:24]>/   one embedding cache entry (distillctl.data.embed)
    <root>/file-hashes.json         sha256 of model files by (path, size, mtime) (distillctl.encoding)
    <root>/methods/                 what distillation methods cache (e.g. MTT expert trajectories)
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir

#: environment variable that moves the cache
CACHE_ENV = "DISTILLCTL_CACHE"


def cache_root() -> Path:
    """``$DISTILLCTL_CACHE``, else the platform's user cache folder for distillctl."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()

    return Path(user_cache_dir("distillctl", appauthor=False))


def embeddings_dir() -> Path:
    """The folder of the embedding cache entries."""
    return cache_root() / "embeddings"


def file_hashes_path() -> Path:
    """The memo of model-file checksums (keyed by resolved path, size and mtime)."""
    return cache_root() / "file-hashes.json"


def methods_dir() -> Path:
    """The folder distillation methods cache into (one subfolder per method)."""
    return cache_root() / "methods"
