"""The CQTNet-style backbone: shapes, unit norm, input-scale invariance, batch independence, and the
export-friendly time pooling that must equal ceil-mode max pooling exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csi_training.models.cqtnet import MIN_BINS, CQTNet, TimeMaxPool2


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("frames", [1, 2, 3, 8, 17, 31, 64])
def test_time_pool_equals_ceil_mode_max_pool(frames: int, rng: np.random.Generator) -> None:
    x = torch.from_numpy(rng.standard_normal((2, 3, 5, frames)).astype(np.float32))
    expected = torch.nn.MaxPool2d((1, 2), ceil_mode=True)(x)
    got = TimeMaxPool2()(x)
    assert got.shape == expected.shape == (2, 3, 5, (frames + 1) // 2)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("width", ["small", "full"])
def test_embeddings_are_unit_norm_scale_invariant_and_batch_independent(
    width: str, rng: np.random.Generator
) -> None:
    torch.manual_seed(int(rng.integers(2**31)))
    model = CQTNet(n_bins=84, embedding_dim=32, width=width).eval()
    assert model.min_frames == 17  # four time poolings by 2, and ≥ 2 steps after the last
    x = torch.from_numpy(rng.random((3, 84, int(rng.integers(17, 90))), dtype=np.float32))
    with torch.no_grad():
        y = model(x)
        assert y.shape == (3, 32)
        torch.testing.assert_close(y.norm(dim=1), torch.ones(3))
        torch.testing.assert_close(model(x * 7.5), y, atol=1e-5, rtol=1e-5)  # per-clip peak normalisation
        torch.testing.assert_close(model(x[1:2]), y[1:2], atol=1e-5, rtol=1e-5)


def test_bad_configuration_is_named() -> None:
    with pytest.raises(ValueError, match="width must be one of"):
        CQTNet(width="huge")
    with pytest.raises(ValueError, match=f"at least {MIN_BINS} frequency bins"):
        CQTNet(n_bins=MIN_BINS - 1)
    with pytest.raises(ValueError, match="pooling must be"):
        CQTNet(pooling="median")
    with pytest.raises(ValueError, match=r"expected features \[B, 84, T\]"):
        CQTNet().eval()(torch.zeros(2, 80, 30))
