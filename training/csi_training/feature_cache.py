"""A content-keyed on-disk cache of frontend features, one .npy (float16, no pickle) per audio file.

The key covers the file's resolved path, size and modification time, the frontend configuration
and the decoding limits, so a changed file or frontend never reuses stale features. Entries are
written atomically (temp file + fsync + rename), so a killed run leaves no half-written entry and
concurrent processes (DDP ranks) may share one cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from csi_runtime.atomic import atomic_open

logger = logging.getLogger(__name__)

__all__ = ["FeatureCache"]


class FeatureCache:
    """Features [F, T] stored as float16 under ``root``; ``namespace`` holds what the features depend on."""

    def __init__(self, root: str | Path, namespace: Mapping[str, Any]) -> None:
        self.root = Path(root)
        self.namespace = json.dumps(namespace, sort_keys=True, default=str)
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_frontend(cls, root: str | Path, frontend_config: Mapping[str, Any], max_s: float) -> FeatureCache:
        """The cache of one frontend's features of tracks decoded up to ``max_s`` seconds (what
        training and evaluation share, so an evaluation reuses the features training computed)."""
        return cls(root, {"frontend": dict(frontend_config), "max_s": float(max_s), "v": 1})

    def key(self, audio_path: str | Path) -> str:
        path = Path(audio_path).resolve()
        st = path.stat()
        text = f"{self.namespace}\n{path}\n{st.st_size}\n{st.st_mtime_ns}"
        return hashlib.sha256(text.encode()).hexdigest()

    def _file(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, audio_path: str | Path) -> np.ndarray | None:
        file = self._file(self.key(audio_path))
        if not file.exists():
            return None
        try:
            arr = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            logger.warning("feature cache entry %s is unreadable (%s); recomputing", file, exc)
            return None
        if arr.ndim != 2 or not np.isfinite(arr).all():
            logger.warning("feature cache entry %s is malformed; recomputing", file)
            return None
        return arr

    def put(self, audio_path: str | Path, features: np.ndarray) -> None:
        file = self._file(self.key(audio_path))
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(file, "wb") as f:
            np.save(f, np.asarray(features, dtype=np.float16), allow_pickle=False)

    def get_or_compute(self, audio_path: str | Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
        cached = self.get(audio_path)
        if cached is not None:
            return cached
        features = np.asarray(compute(), dtype=np.float32)
        if features.ndim != 2:
            raise ValueError(f"features must be [F, T], got shape {features.shape}")
        if np.abs(features).max(initial=0.0) > np.finfo(np.float16).max:
            raise ValueError(f"features of {audio_path} exceed the float16 range of the cache")
        self.put(audio_path, features)
        return features.astype(np.float16)
