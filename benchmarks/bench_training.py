"""Training throughput of the CQTNet-style encoder: samples/s of one optimisation step.

Compares, in the same run and on the same batches, our training step (mixed precision: bf16
autocast on CPUs with bf16 units, as the trainer uses it) against the plain float32 eager step —
the ratio is what the trainer's mixed precision buys here. Also measures the input pipeline
(crop + time stretch + pitch roll + SpecAugment of a P×K batch) so one can see whether the model
or the data is the bottleneck. Results: benchmarks/results/training.md.

Batch: 16 works × 4 versions = 64 crops of 30 s at the default frontend rate (CQT at 25 frames/s
averaged to 5 frames/s → 150 frames × 84 bins). On a GPU (when one is present) the full model is
measured too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from csi_training.augment import FeatureAugment, crop  # noqa: E402
from csi_training.config import AugmentConfig, LossConfig  # noqa: E402
from csi_training.distributed import autocast, cpu_supports_bf16  # noqa: E402
from csi_training.losses import TripletLoss  # noqa: E402
from csi_training.models.cqtnet import CQTNet  # noqa: E402

from conftest import SMOKE, record  # noqa: E402

BATCH = 16 if SMOKE else 64  # P×K = 4×4 (smoke) or 16×4
FRAMES = 40 if SMOKE else 150  # 30 s at 5 frames/s
N_BINS = 84
CASES = [("small", "cpu")] + ([("full", "cuda")] if torch.cuda.is_available() and not SMOKE else [])


def _setup(width: str, device: str) -> dict[str, Any]:
    torch.manual_seed(0)
    model = CQTNet(n_bins=N_BINS, embedding_dim=256, width=width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_cfg = LossConfig()
    loss = TripletLoss(margin=loss_cfg.margin, mining=loss_cfg.mining, metric=loss_cfg.distance)
    x = torch.rand(BATCH, N_BINS, FRAMES, device=device)
    labels = torch.arange(BATCH, device=device) // 4
    return {
        "model": model,
        "opt": opt,
        "loss": loss,
        "x": x,
        "labels": labels,
        "device": torch.device(device),
    }


def _step(s: dict[str, Any], amp: bool) -> None:
    with autocast(s["device"], amp):
        emb = s["model"](s["x"])
    loss, _ = s["loss"](emb.float(), s["labels"])
    s["opt"].zero_grad(set_to_none=True)
    loss.backward()
    s["opt"].step()
    if s["device"].type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize(("width", "device"), CASES, ids=[f"{w}-{d}" for w, d in CASES])
@pytest.mark.parametrize("precision", ["mixed", "fp32"])
def test_train_step(benchmark: Any, machine: dict[str, Any], width: str, device: str, precision: str) -> None:
    s = _setup(width, device)
    amp = precision == "mixed"
    _step(s, amp)  # warm-up (oneDNN primitive creation, cuDNN autotuning)
    benchmark.pedantic(_step, args=(s, amp), rounds=2 if SMOKE else 5, iterations=1, warmup_rounds=0)
    if benchmark.stats is None:  # --benchmark-disable
        return
    rate = BATCH / benchmark.stats.stats.median
    benchmark.extra_info.update(samples_per_s=rate, batch=BATCH, frames=FRAMES)
    label = (
        "bf16 autocast"
        if device == "cpu" and cpu_supports_bf16()
        else "autocast"
        if device == "cuda"
        else "fp32"
    )
    key = {
        "model": width,
        "device": device,
        "batch": f"{BATCH}×{N_BINS}×{FRAMES}",
        "threads": torch.get_num_threads(),
    }
    if amp:
        record("training", key, {"csi step (samples/s)": f"{rate:.1f}", "precision": label})
    else:
        record("training", key, {"fp32 eager (samples/s)": f"{rate:.1f}"})


def test_input_pipeline(benchmark: Any, machine: dict[str, Any]) -> None:
    """Crops + augmentation of one batch from in-memory float16 features (samples/s)."""
    rng = np.random.default_rng(0)
    tracks = [rng.random((N_BINS, int(rng.integers(100, 400)))).astype(np.float16) for _ in range(BATCH)]
    augment = FeatureAugment(AugmentConfig())

    def batch() -> None:
        stretch = augment.stretch_factors(BATCH, rng)
        x = np.stack([crop(t, FRAMES, rng, s) for t, s in zip(tracks, stretch)])
        augment(torch.from_numpy(x), rng)

    benchmark.pedantic(batch, rounds=3 if SMOKE else 20, iterations=1, warmup_rounds=1)
    if benchmark.stats is None:
        return
    rate = BATCH / benchmark.stats.stats.median
    benchmark.extra_info.update(samples_per_s=rate)
    record(
        "training",
        {"model": "input pipeline", "device": "cpu", "batch": f"{BATCH}×{N_BINS}×{FRAMES}", "threads": 1},
        {"csi step (samples/s)": f"{rate:.0f}"},
    )
