"""Is the Hugging Face hub reachable? Asked once, quickly, before any download.

Without this probe `datasets.load_dataset` retries for about 24 s before failing on a machine with no route to the
hub (measured here); the probe answers in milliseconds and lets a step fall back with one clear line.
"""
from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse

_TRUE = {"1", "true", "yes", "on"}


@lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE or os.environ.get("HF_DATASETS_OFFLINE", "") in _TRUE:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Tell the HF libraries not to try the network again in this process (each try costs retries)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
