"""Hierarchical audio cropping (csi_training.frontends.hierarchical) against references computed
part by part: the dense-DFT LogMel module on each part alone (zero-padded as documented), librosa's
melspectrogram on one part, and locality checks (a part's spectrogram changes when, and only when,
one of its own samples changes). Fresh random sizes and signals every run.

Tolerances: against LogMel (dense DFT, float32) and librosa (float64 input) the dB values agree
within 1e-4 dB on cells within 80 dB of each spectrogram's maximum (measured <= 6e-6 dB against
LogMel over 6 random configurations and against librosa over 5 signals x 7 parts).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from csi_training.frontends import LogMel
from csi_training.frontends.hierarchical import HierarchicalLogMel, Hierarchy, HierarchyConfig

DB_TOL = 1e-4
DYNAMIC_RANGE_DB = 80.0


def _close_db(ours: np.ndarray, ref: np.ndarray) -> float:
    """Max |dB difference| over cells within DYNAMIC_RANGE_DB of the reference's maximum."""
    keep = ref > ref.max() - DYNAMIC_RANGE_DB
    return float(np.abs(ours - ref)[keep].max())


def _random_config(rng: np.random.Generator) -> HierarchyConfig:
    levels = int(rng.integers(1, 5))
    splits = int(rng.integers(2, 4))
    finest_hop = 2 * int(rng.integers(8, 33))
    coarsest = finest_hop * splits ** (levels - 1)
    n_fft = int(2 ** (np.floor(np.log2(max(coarsest, 32))) + 1))  # > coarsest: every sample weighted
    return HierarchyConfig(
        sample_rate=8000,
        levels=levels,
        splits=splits,
        frames=int(rng.integers(3, 12)),
        finest_hop=finest_hop,
        n_fft=n_fft,
        n_mels=int(rng.integers(8, max(9, min(40, n_fft // 4)))),
    )


def test_hierarchy_tables() -> None:
    h = Hierarchy(levels=4, splits=2)
    assert h.n_parts == 15
    assert h.level.tolist() == [0] + [1] * 2 + [2] * 4 + [3] * 8
    assert h.parent.tolist() == [-1, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    h3 = Hierarchy(levels=3, splits=3)
    assert h3.n_parts == 13
    for j in range(1, h3.n_parts):
        start, stop = h3.span(j, 81)
        p_start, p_stop = h3.span(int(h3.parent[j]), 81)
        assert p_start <= start < stop <= p_stop  # every part lies inside its whole
        assert stop - start == (p_stop - p_start) // 3


@pytest.mark.parametrize("trial", range(3))
def test_every_part_matches_a_separate_logmel(rng: np.random.Generator, trial: int) -> None:
    config = _random_config(rng)
    module = HierarchicalLogMel(config)
    batch = int(rng.integers(1, 4))
    wave = rng.standard_normal((batch, config.whole_samples)).astype(np.float32)
    wave *= np.linspace(0.1, 1.0, config.whole_samples, dtype=np.float32)  # not stationary
    out = module(torch.from_numpy(wave)).numpy()
    h = config.hierarchy
    assert out.shape == (batch, h.n_parts, config.n_mels, config.frames)  # same size at every level
    for n in range(config.levels):
        reference = LogMel(config.mel_config(n))
        pad = (config.n_fft - config.hop(n)) // 2
        for j in range(h.offset(n), h.offset(n) + h.level_size(n)):
            start, stop = h.span(j, config.whole_samples)
            assert stop - start == config.frames * config.hop(n)
            part = F.pad(torch.from_numpy(wave[:, start:stop]), (pad, pad))
            ref = reference(part).numpy()
            assert ref.shape == (batch, config.n_mels, config.frames)
            for b in range(batch):
                assert _close_db(out[b, j], ref[b]) < DB_TOL, (n, j, b)


def test_one_part_matches_librosa(rng: np.random.Generator) -> None:
    librosa = pytest.importorskip("librosa")
    config = HierarchyConfig(sample_rate=16000, levels=3, splits=2, frames=16, finest_hop=128, n_fft=1024)
    wave = rng.standard_normal((1, config.whole_samples))
    out = HierarchicalLogMel(config)(torch.from_numpy(wave.astype(np.float32)))[0].numpy()
    h = config.hierarchy
    j = int(rng.integers(0, h.n_parts))
    n = int(h.level[j])
    start, stop = h.span(j, config.whole_samples)
    pad = (config.n_fft - config.hop(n)) // 2
    part = np.pad(wave[0, start:stop], (pad, pad))
    mel = librosa.feature.melspectrogram(
        y=part,
        sr=config.sample_rate,
        n_fft=config.n_fft,
        hop_length=config.hop(n),
        center=False,
        n_mels=config.n_mels,
        power=2.0,
    )
    ref = librosa.power_to_db(mel, ref=1.0, amin=config.amin, top_db=None)
    assert ref.shape == (config.n_mels, config.frames)
    assert _close_db(out[j], ref) < DB_TOL


def test_part_depends_exactly_on_its_own_samples(rng: np.random.Generator) -> None:
    config = HierarchyConfig(
        sample_rate=8000, levels=3, splits=2, frames=6, finest_hop=32, n_fft=256, n_mels=16
    )
    module = HierarchicalLogMel(config)
    h = config.hierarchy
    wave = torch.from_numpy(rng.standard_normal((1, config.whole_samples)).astype(np.float32))
    base = module(wave)
    # random samples, and frame boundaries of the whole-clip level (where a periodic Hann window of
    # n_fft = hop would give weight 0: the config refuses that)
    boundaries = [k * config.coarsest_hop for k in range(1, config.frames)]
    picks = [int(i) for i in rng.integers(0, config.whole_samples, size=6)] + [
        int(i) for i in rng.choice(boundaries, size=3, replace=False)
    ]
    for i in picks:
        changed = wave.clone()
        changed[0, i] += 3.0
        out = module(changed)
        for j in range(h.n_parts):
            start, stop = h.span(j, config.whole_samples)
            differs = not torch.equal(out[0, j], base[0, j])
            # inside: some window sees the sample (coverage); outside: bit-identical (no leakage)
            assert differs == (start <= i < stop), (i, j, start, stop)


def test_levels_only_and_input_checks(rng: np.random.Generator) -> None:
    config = HierarchyConfig(
        sample_rate=8000, levels=3, splits=2, frames=5, finest_hop=16, n_fft=128, n_mels=8
    )
    module = HierarchicalLogMel(config)
    wave = torch.from_numpy(rng.standard_normal((2, config.whole_samples)).astype(np.float32))
    whole = module(wave, levels_only=1)
    assert whole.shape == (2, 1, config.n_mels, config.frames)
    assert torch.allclose(whole[:, 0], module(wave)[:, 0])
    with pytest.raises(ValueError, match="expected waveform"):
        module(wave[:, :-1])
    with pytest.raises(ValueError, match="levels_only"):
        module(wave, levels_only=4)


def test_config_refusals() -> None:
    with pytest.raises(ValueError, match="must be below n_fft"):
        HierarchyConfig(levels=4, splits=2, finest_hop=256, n_fft=2048)  # hop = n_fft: boundary samples lost
    with pytest.raises(ValueError, match="even"):
        HierarchyConfig(finest_hop=255)
    with pytest.raises(ValueError, match="splits"):
        HierarchyConfig(splits=1)
    with pytest.raises(ValueError, match="levels"):
        HierarchyConfig(levels=0)
    c = HierarchyConfig()
    assert c.whole_samples == 128 * 128 * 8
    assert [c.hop(n) for n in range(4)] == [1024, 512, 256, 128]
    assert HierarchyConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown"):
        HierarchyConfig.from_dict({"levelz": 3})


@pytest.mark.parametrize("center", [True, False])
def test_stft_logmel_equals_the_logmel_module(rng: np.random.Generator, center: bool) -> None:
    from csi_training.frontends import MelConfig
    from csi_training.frontends.hierarchical import stft_logmel

    config = MelConfig(
        sample_rate=16000,
        n_fft=int(rng.choice([256, 512, 1024])),
        hop_length=int(rng.integers(64, 400)),
        n_mels=int(rng.integers(16, 64)),
        center=center,
        top_db=float(rng.choice([60.0, 80.0])),
    )
    wave = torch.from_numpy(rng.standard_normal((2, int(rng.integers(2000, 9000)))).astype(np.float32))
    ours = stft_logmel(wave, config).numpy()
    ref = LogMel(config)(wave).numpy()
    assert ours.shape == ref.shape
    for b in range(2):
        assert _close_db(ours[b], ref[b]) < DB_TOL
    with pytest.raises(ValueError, match="supports"):
        stft_logmel(wave, MelConfig(pool=2))
