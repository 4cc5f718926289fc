"""Training checkpoints for the export tests: real checkpoint folders of randomly initialised encoders.

Batch-norm running statistics and GeM's p are randomised too, so that the exported graphs carry
non-trivial values of every parameter (an untrained network with unit statistics would hide a
folding or layout error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from csi_training.checkpoint import save_checkpoint
from csi_training.config import ModelConfig, TrainConfig
from csi_training.models.encoder import build_encoder


def make_checkpoint(
    directory: Path, seed: int, frontend: dict[str, Any] | None = None, embedding_dim: int = 64
) -> Path:
    """A checkpoint folder (model.safetensors, config.json, metrics.json) of a random small CQTNet."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = TrainConfig(model=ModelConfig(width="small", embedding_dim=embedding_dim))
    if frontend is not None:
        config = TrainConfig(model=config.model, frontend=frontend)
    encoder = build_encoder(config.frontend, config.model)
    with torch.no_grad():
        for module in encoder.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.2, module.num_features)))
                module.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, module.num_features)))
                module.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, module.num_features)))
                module.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, module.num_features)))
        encoder.backbone.pool.p.fill_(float(rng.uniform(2.0, 4.0)))
    encoder.eval()
    metrics = {"best": {"epoch": 3, "val": {"MAP": 0.5, "P@10": 0.2, "MR1": 3.0}}}
    return save_checkpoint(directory, encoder, config, {"epoch": 3, "step": 30}, metrics)
