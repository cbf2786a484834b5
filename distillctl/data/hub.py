"""Hugging Face hub reachability: fail in seconds, not minutes, when the hub cannot be reached.

Used by the ``hf`` dataset plugin and the encoders. When the hub is unreachable the process switches
``huggingface_hub`` / ``datasets`` to offline mode, so what is already in their local caches still loads.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


def offline_requested() -> bool:
    return any(os.environ.get(v, "0").strip().lower() in _TRUE
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """A TCP connection to the hub endpoint (``HF_ENDPOINT``) within ``timeout`` seconds; False when
    offline mode is requested by the environment."""
    if offline_requested():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Make huggingface_hub / datasets / transformers use their local caches only (no slow retries)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    try:  # already-imported modules read the constants at import time
        if "huggingface_hub" in sys.modules:
            import huggingface_hub.constants as hc

            hc.HF_HUB_OFFLINE = True
        if "datasets" in sys.modules:
            import datasets.config as dc

            dc.HF_HUB_OFFLINE = True
            if hasattr(dc, "HF_DATASETS_OFFLINE"):
                dc.HF_DATASETS_OFFLINE = True
    except Exception:  # pragma: no cover - best effort
        pass
