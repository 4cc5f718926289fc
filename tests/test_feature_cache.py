"""The on-disk feature cache: keyed by content and config, atomic, robust to damaged entries."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from csi_training.feature_cache import FeatureCache


def test_compute_once_then_hit(tmp_path: Path, rng: np.random.Generator) -> None:
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x" * 100)
    cache = FeatureCache(tmp_path / "cache", {"frontend": {"hop": 640}})
    feats = rng.random((84, 30)).astype(np.float32)
    calls = []
    out = cache.get_or_compute(audio, lambda: calls.append(1) or feats)
    again = cache.get_or_compute(audio, lambda: calls.append(1) or feats)
    assert len(calls) == 1
    np.testing.assert_array_equal(out, again)
    # Stored as float16: equal to float16 rounding, which is coarser than rtol 1e-3 below
    # float16's smallest normal (6.1e-5), where spacing is absolute (2**-24).
    np.testing.assert_array_equal(out, feats.astype(np.float16))
    np.testing.assert_allclose(out.astype(np.float32), feats, rtol=2**-11, atol=2**-25)
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


def test_key_changes_with_file_and_config(tmp_path: Path) -> None:
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x" * 100)
    a = FeatureCache(tmp_path / "c", {"hop": 640})
    b = FeatureCache(tmp_path / "c", {"hop": 320})
    assert a.key(audio) != b.key(audio)
    k = a.key(audio)
    audio.write_bytes(b"y" * 101)
    assert a.key(audio) != k
    os.utime(audio, ns=(1, 1))
    assert a.key(audio) != k


def test_damaged_entry_is_recomputed(tmp_path: Path) -> None:
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x")
    cache = FeatureCache(tmp_path / "c", {})
    cache.put(audio, np.ones((4, 5)))
    entry = next((tmp_path / "c").rglob("*.npy"))
    entry.write_bytes(b"\x93NUMPY garbage")
    out = cache.get_or_compute(audio, lambda: np.full((4, 5), 2.0))
    assert (out == 2).all()


def test_values_outside_float16_are_refused(tmp_path: Path) -> None:
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x")
    cache = FeatureCache(tmp_path / "c", {})
    with pytest.raises(ValueError, match="float16 range"):
        cache.get_or_compute(audio, lambda: np.full((2, 2), 1e6))
