"""Versions synthesised inside the training loop, from note events only (no audio on disk).

`OnlineVersions` is a map-style torch Dataset over (work, version) pairs. Item i of an epoch is
version ``i % versions_per_work`` of work ``i // versions_per_work``; what that version sounds
like is a function of (seed, work id, version index, epoch) only, so it differs from epoch to
epoch (call `set_epoch` as with a DistributedSampler), is identical in every DataLoader worker
and process, and can be replayed. Indexing with a tuple ``(work_index, version_index, epoch)``
addresses any version directly.

Each item is rendered with the fast synthesiser and the cheap production chain (`codec_approx`
instead of an ffmpeg MP3 round trip). With clip_s set, a random excerpt of clip_s seconds of
the version is rendered (with a short pre-roll so notes and reverb already sounding at the cut
are there) instead of the whole version.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from csi_training.render import effects, synth
from csi_training.render.notes import Work
from csi_training.render.versions import (
    Arrangement,
    VersionConfig,
    VoiceEvents,
    apply_version,
    sample_version,
    version_rng,
)

PREROLL_S = 1.0  # rendered before a clip's start and cut off: the room is already reverberating


def _window(arrangement: Arrangement, start_s: float, end_s: float) -> Arrangement:
    """The notes sounding in [start_s, end_s), shifted so start_s is 0 (notes already sounding keep
    their negative onset: the synth renders their remainder as in the whole version)."""
    voices = []
    for voice in arrangement.voices:
        ev = voice.events
        off = ev["onset_s"] + ev["duration_s"] + synth.tail_s(voice.spec.preset)
        sel = ev[(off > start_s) & (ev["onset_s"] < end_s)].copy()
        sel["onset_s"] -= start_s
        voices.append(VoiceEvents(voice.spec, sel))
    return Arrangement(tuple(voices))


class OnlineVersions(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """Synthesised versions of works: item → (waveform float32 tensor [n], work index).

    works: the works (e.g. a training split of `load_note_corpus`); sample_rate in Hz;
    clip_s: fixed-length excerpts (zero-padded when a version is shorter) or None for whole
    versions (variable length: batch with `collate_padded`); versions_per_work: items per work
    and epoch; seed: the dataset's seed; effects: False skips the production chain (dry mix at
    -20 dBFS RMS).
    """

    def __init__(
        self,
        works: Sequence[Work],
        sample_rate: int = 16000,
        clip_s: float | None = None,
        version_config: VersionConfig = VersionConfig(original_first=False),  # noqa: B008 - frozen
        seed: int = 0,
        versions_per_work: int = 2,
        max_duration_s: float | None = 180.0,
        effects: bool = True,
    ) -> None:
        if not works:
            raise ValueError("OnlineVersions needs at least one work")
        if sample_rate <= 0 or versions_per_work < 1:
            raise ValueError("sample_rate and versions_per_work must be positive")
        if clip_s is not None and clip_s <= 0:
            raise ValueError(f"clip_s must be > 0 or None, got {clip_s}")
        self.works = list(works)
        self.sample_rate = sample_rate
        self.clip_s = clip_s
        self.version_config = version_config
        self.seed = seed
        self.versions_per_work = versions_per_work
        self.max_duration_s = max_duration_s
        self.effects = effects
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Items of the next epoch are new versions (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.works) * self.versions_per_work

    def __getitem__(self, index: int | tuple[int, int] | tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(index, tuple):
            work_index, version_index = int(index[0]), int(index[1])
            epoch = int(index[2]) if len(index) > 2 else self.epoch
        else:
            if not -len(self) <= index < len(self):
                raise IndexError(f"index {index} out of range for {len(self)} items")
            work_index, version_index = divmod(int(index) % len(self), self.versions_per_work)
            epoch = self.epoch
        if not 0 <= work_index < len(self.works):
            raise IndexError(f"work index {work_index} out of range for {len(self.works)} works")
        return torch.from_numpy(self.render(work_index, version_index, epoch)), work_index

    def render(self, work_index: int, version_index: int, epoch: int) -> np.ndarray:
        """The waveform of one version (float32 [n]) — what __getitem__ wraps in a tensor."""
        work = self.works[work_index]
        rng = version_rng(self.seed, work.work_id, version_index, epoch)
        original = version_index == 0 and self.version_config.original_first
        params = sample_version(
            work, rng, self.version_config, original=original, version_index=version_index
        )
        arrangement = apply_version(work, params, max_duration_s=self.max_duration_s)
        sr = self.sample_rate
        tail = 0.5 + 0.5 * params.reverb_rt60_s
        if self.clip_s is None:
            dry = synth.synthesize(arrangement, sr, arrangement.duration_s + tail)
            cut = 0
        else:
            length = arrangement.duration_s + tail
            # whole samples: the excerpt's notes then start on the same samples as in the whole version
            start = round(float(rng.uniform(0.0, max(0.0, length - self.clip_s))) * sr) / sr
            preroll = round(min(start, PREROLL_S) * sr) / sr
            window = _window(arrangement, start - preroll, start + self.clip_s)
            dry = synth.synthesize(window, sr, preroll + self.clip_s)
            cut = round(preroll * sr)
        if not np.any(dry[cut:]):
            y = np.zeros(len(dry) - cut, dtype=np.float32)  # a silent stretch of a version is silence
        elif self.effects:
            y = effects.produce(dry, sr, params, rng, offline=False)[cut:]
        else:
            y = effects.limit_peak(effects.normalize_loudness(dry, -20.0))[cut:]
        if self.clip_s is not None:
            n = round(self.clip_s * sr)
            y = y[:n] if len(y) >= n else np.concatenate([y, np.zeros(n - len(y), np.float32)])
        return np.ascontiguousarray(y, dtype=np.float32)


def collate_padded(
    batch: Sequence[tuple[torch.Tensor, int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch variable-length items: (waveforms float32 [B, n_max] zero-padded, lengths int64 [B],
    work indices int64 [B])."""
    lengths = torch.tensor([len(w) for w, _ in batch], dtype=torch.int64)
    out = torch.zeros(len(batch), int(lengths.max()) if len(batch) else 0, dtype=torch.float32)
    for i, (w, _) in enumerate(batch):
        out[i, : len(w)] = w
    return out, lengths, torch.tensor([k for _, k in batch], dtype=torch.int64)
