"""Waveform → time-frequency features as torch modules that export to ONNX with plain ops.

    from csi_training.frontends import CQT, CQTConfig, build_frontend, frontend_from_dict

    frontend = CQT(CQTConfig())                 # 16 kHz, hop 640 (25 fps), 84 bins from C1, log1p
    features = frontend(waveform)               # float [B, n] → [B, 84, frontend.frames(n)]
    frontend_from_dict(frontend.config.to_dict())   # the same frontend again (config JSON round trip)

Every frontend has .config (frozen dataclass, part of the model config), .sample_rate, .n_features,
.frame_rate (Hz, after pooling), .min_samples, .frames(n_samples) and .check(waveform). forward()
does not validate its input (it must export); call check_waveform / frontend.check where audio enters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from csi_training.frontends.base import Frontend, check_waveform
from csi_training.frontends.chroma import Chroma
from csi_training.frontends.config import (
    ChromaConfig,
    CQTConfig,
    FrontendConfig,
    MelConfig,
    frontend_config_from_dict,
)
from csi_training.frontends.cqt import CQT
from csi_training.frontends.mel import LogMel

__all__ = [
    "CQT",
    "CQTConfig",
    "Chroma",
    "ChromaConfig",
    "Frontend",
    "FrontendConfig",
    "LogMel",
    "MelConfig",
    "build_frontend",
    "check_waveform",
    "frontend_config_from_dict",
    "frontend_from_dict",
]


def build_frontend(config: FrontendConfig) -> Frontend:
    """The frontend module for a config (CQTConfig → CQT, MelConfig → LogMel, ChromaConfig → Chroma)."""
    if isinstance(config, CQTConfig):
        return CQT(config)
    if isinstance(config, MelConfig):
        return LogMel(config)
    if isinstance(config, ChromaConfig):
        return Chroma(config)
    raise ValueError(f"not a frontend config: {type(config).__name__}")


def frontend_from_dict(data: Mapping[str, Any]) -> Frontend:
    """{"kind": "cqt" | "logmel" | "chroma", **config fields} (as written by config.to_dict()) → module."""
    return build_frontend(frontend_config_from_dict(data))
