"""Constant-Q transform as a torch module built from plain convolutions (exports to ONNX / TensorRT).

Definition (Brown 1991, with librosa's scaling): bin k, centred at f_k = fmin * 2^(k / bins_per_octave),
is a window of L_k = Q * sample_rate / f_k samples (Q = filter_scale / alpha) centred on the frame,
times exp(-2 pi i f_k m / sample_rate), divided by the window's sum (L1) and multiplied by sqrt(L_k),
as librosa.cqt(scale=True): a sinusoid of amplitude A on bin k gives |C_k| = A / 2 * sqrt(L_k), and white
noise a flat expected spectrum. Frame t is centred on sample t * hop_length of the zero-padded input
(librosa's default pad_mode="constant"), so there are 1 + n // hop_length frames, as in librosa.

Multi-rate evaluation (all plain strided convs): octaves are analysed from the top down; before a lower
octave the signal is low-passed and decimated by 2 (a half-band Kaiser filter, passband and stopband
within 2e-6 of ideal) as long as 2^d divides hop_length and the octave stays below 0.3 of the decimated
rate. Every octave then has kernels of about the top octave's length (134 taps for the defaults)
instead of up to 8.5k taps for C1 at 16 kHz. The window is a continuous-time window sampled at each
octave's rate, so the result does not depend on the rate an octave runs at: it matches a direct
float64 full-rate evaluation of the definition within 3e-5 relative Frobenius error.

Against librosa 0.11 (librosa.cqt(scale=True, sparsity=0, res_type="soxr_hq", tuning=0); chirps,
chords, white/pink noise and mixtures of 0.5-11.3 s; tests/test_frontends.py): on the cells whose
filter lies inside the signal, within 1.9% relative Frobenius error (typically 1-1.5%; asserted 3%),
median dB error below 0.3 dB over cells within 60 dB of the maximum and below 1.8 dB over cells
within 20 dB of it; over all cells within 4.4% (asserted 7%; librosa's soxr resampling has edge
transients). The difference is librosa's discretisation, not its scaling: librosa builds each
octave's filters at that octave's decimated rate with lengths rounded to whole samples and the
window half a sample (at that rate: up to 32 samples at full rate for C1) off the frame centre.
On a bin-centre sinusoid both give A / 2 * sqrt(L_k) within 2e-4.

Cost, 30 s of audio at 16 kHz on one CPU thread (best of 10, on a shared, loaded machine): defaults
(hop 640, 84 bins, 12 per octave) 3.9 ms against 54 ms for librosa.cqt; 168 bins at 24 per octave,
hop 320: 17 ms against 141 ms; onnxruntime on the exported defaults: 3.2 ms.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from csi_training.frontends.base import POWER_FLOOR, Frontend, as_batch, compress
from csi_training.frontends.config import CQTConfig
from csi_training.frontends.kernels import (
    DECIMATION_BLOCK,
    DECIMATION_HALF_TAPS,
    cqt_frequencies,
    cqt_groups,
    decimation_phase_kernel,
    two_adic_valuation,
)


class CQT(Frontend):
    """waveform float [B, n] or [n] at config.sample_rate → CQT [B, n_bins, T] or [n_bins, T],
    T = frames(n), bins from low to high frequency, magnitude pooled over config.pool frames and
    log-compressed per config.log.

    context: samples on each side of a frame centre that its value depends on. With center=False,
    frame t is centred on sample context + t * hop_length and needs the whole context inside the input.

    Buffers (not persistent: always derived from the config): one real/imag kernel per octave
    ("kernel_<i>", [2 * bins, 1, taps], top octave first) and the decimation kernels.
    """

    def __init__(self, config: CQTConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else CQTConfig()
        c = self.config
        groups = cqt_groups(
            c.sample_rate,
            c.hop_length,
            c.fmin,
            c.n_bins,
            c.bins_per_octave,
            c.filter_scale,
            c.bandwidth,
            c.window,
        )
        self._groups = [(g.bin_start, g.bin_stop, g.decimation, g.n_taps) for g in groups]
        for i, g in enumerate(groups):
            weight = np.concatenate([g.kernel.real, g.kernel.imag])[:, None, :]
            self.register_buffer(f"kernel_{i}", torch.tensor(weight, dtype=torch.float32), persistent=False)

        self.depth = max(g.decimation for g in groups)
        # Decimation stage j (rate 2^-(j-1) → 2^-j) works on blocks of `block` output samples; 2 * block
        # must divide hop_length / 2^(j-1) so that every stage's input is a whole number of blocks.
        self._stage_blocks = [
            min(DECIMATION_BLOCK, 2 ** (two_adic_valuation(c.hop_length) - j))
            for j in range(1, self.depth + 1)
        ]
        for block in sorted(set(self._stage_blocks)):
            lowpass = torch.tensor(decimation_phase_kernel(block), dtype=torch.float32)
            self.register_buffer(f"decimation_kernel_{block}", lowpass, persistent=False)

        # Samples around a frame centre that the longest kernel (and the lowpass filters feeding it)
        # reach, rounded up so that it stays on the sample grid of the deepest rate.
        reach = max(
            2**g.decimation * (g.n_taps // 2) + DECIMATION_HALF_TAPS * (2**g.decimation - 1) for g in groups
        )
        self.context = math.ceil(reach / 2**self.depth) * 2**self.depth
        # The padded signal is T * hop_length + tail samples long (T frames): room for the context on
        # both sides and a whole number of decimation blocks at every stage.
        grid = 2 * DECIMATION_BLOCK * 2**self.depth
        self._tail = math.ceil((2 * self.context + c.hop_length) / grid) * grid

        self.sample_rate = c.sample_rate
        self.n_features = c.n_bins
        self.frame_rate = c.sample_rate / (c.hop_length * c.pool)
        if c.center:
            self.min_samples = max(1, (c.pool - 1) * c.hop_length)
        else:
            self.min_samples = 2 * self.context + (c.pool - 1) * c.hop_length

    @property
    def frequencies(self) -> np.ndarray:
        """Bin centre frequencies in Hz, [n_bins]."""
        c = self.config
        return cqt_frequencies(c.fmin, c.n_bins, c.bins_per_octave)

    def decimations(self) -> list[int]:
        """Decimation exponent d (rate sample_rate / 2^d) of each octave group, top octave first."""
        return [d for _, _, d, _ in self._groups]

    def frames(self, n_samples: int) -> int:
        """Output frames for n_samples input samples (0 if shorter than min_samples)."""
        c = self.config
        if n_samples < self.min_samples:
            return 0
        span = n_samples if c.center else n_samples - 2 * self.context
        if span < 0:
            return 0
        return (span // c.hop_length + 1) // c.pool

    def magnitude(self, waveform: torch.Tensor) -> torch.Tensor:
        """|CQT| before pooling and compression: [B, 1, n] → [B, n_bins, T], T = frames before pooling.

        Shapes are written as exact functions of T (no clamping slices, no -1 in reshapes) so that
        torch.export can prove them for every input length.
        """
        c = self.config
        batch, n = waveform.shape[0], waveform.shape[-1]
        left = self.context if c.center else 0
        n_frames = (n + 2 * left - 2 * self.context) // c.hop_length + 1
        x = F.pad(waveform, (left, n_frames * c.hop_length + self._tail - n - left))
        powers = []
        level = 0
        for i, (start, stop, decimation, taps) in enumerate(self._groups):
            while level < decimation:
                length = n_frames * (c.hop_length // 2**level) + self._tail // 2**level
                x = self._decimate(x, batch, length, self._stage_blocks[level])
                level += 1
            offset = self.context // 2**decimation - taps // 2
            kernel = self.get_buffer(f"kernel_{i}")
            response = F.conv1d(x[..., offset:], kernel, stride=c.hop_length // 2**decimation)[..., :n_frames]
            bins = stop - start
            powers.append(response[:, :bins] ** 2 + response[:, bins:] ** 2)
        power = torch.cat(powers[::-1], dim=1)
        return torch.sqrt(torch.clamp(power, min=POWER_FLOOR))

    def _decimate(self, x: torch.Tensor, batch: int, length: int, block: int) -> torch.Tensor:
        """Half-band lowpass, keep every other sample: [B, 1, length] → [B, 1, length / 2]
        (length a multiple of 2 * block). One strided conv yields `block` output samples per step
        (kernels.decimation_phase_kernel); transposing and merging dimensions puts them in order."""
        weight = self.get_buffer(f"decimation_kernel_{block}")
        # [B, block, length / (2 block)]: channel r of step q is output sample block * q + r
        blocks = F.conv1d(x, weight, stride=2 * block, padding=DECIMATION_HALF_TAPS)
        return blocks.transpose(1, 2).reshape(batch, 1, (length // (2 * block)) * block)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        c = self.config
        x, unbatched = as_batch(waveform, self.get_buffer("kernel_0").dtype)
        features = self.magnitude(x)
        if c.pool > 1:
            features = F.avg_pool1d(features, c.pool)
        features = compress(features, c.log, c.log_scale, c.amin, c.top_db, power=1.0)
        return features[0] if unbatched else features
