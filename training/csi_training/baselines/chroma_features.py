"""HPCP chroma for the classical baselines, computed with essentia.

essentia is an optional dependency (the ``dev`` extra): it is imported inside the functions that
need it, never at module import, and a missing install is a clear ``ImportError``.

The frame-level chain is essentia's standard HPCP chain with the parameters of the Da-TACOS
benchmark feature extractor (Yesiler et al., ISMIR 2019, ``acoss``):

    frame (4096 samples, hop 512 at 44.1 kHz: 92.9 ms window, 11.6 ms hop)
    → Windowing (blackmanharris62) → Spectrum → SpectralPeaks (≤ 100 peaks, 100-3500 Hz)
    → SpectralWhitening → HPCP (12 bins, 8 harmonics, A = bin 0, 440 Hz, unitMax per frame)

essentia's cover-song tutorial (streaming example) uses the same window, frame size, whitening,
100-3500 Hz band and 12 bins, but at 32 kHz with a 2048-sample hop and without harmonic
weighting; the harmonic weighting (Gómez 2006) and the finer hop are Da-TACOS's. HPCP's
``nonLinear`` post-processing is off in both references (``HPCPConfig(non_linear=True)`` enables it).

Two derived views feed the two baselines:

- ``downsample_hpcp``: median over blocks of 40 frames (≈ 0.46 s per frame), the time resolution
  Da-TACOS feeds to Serra et al.'s Qmax on full songs (see ``qmax.py``). Short clips keep few
  frames at that rate (a 20 s clip: 44); on 15-33 s synthetic melodies a factor of 10 (≈ 0.12 s)
  separated versions better (MAP 1.00 vs 0.94-0.95) at ~20× the cost per pair, so it is a
  parameter (``downsample``), and a value other than 40 is a deviation worth reporting;
- ``beat_synchronous_chroma``: frames averaged between consecutive beats from essentia's
  ``RhythmExtractor2013`` and each beat scaled to max 1, the beat-chroma of the Million Song
  Dataset that Bertin-Mahieux & Ellis used for the 2D Fourier-magnitude baseline (``ftm2d.py``).

``chroma_for_files`` loads audio files (soundfile, soxr resampling), computes both views and
reports broken files instead of stopping.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.pool
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

ESSENTIA_INSTALL_HINT = "pip install --pre essentia"
N_CHROMA = 12
BEAT_TRACKER_SAMPLE_RATE = 44100  # Hz; RhythmExtractor2013 only works at this rate
QMAX_DOWNSAMPLE_FACTOR = 40  # HPCP frames per Qmax frame (40 × 11.6 ms ≈ 0.46 s), as in Da-TACOS

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(n_done, n_total)`` after each finished item."""


def require_essentia() -> ModuleType:
    """Return ``essentia.standard``; a clear ``ImportError`` when essentia is not installed."""
    try:
        import essentia  # noqa: F401
        import essentia.standard as essentia_standard
    except ImportError as error:
        raise ImportError(
            "the classical baselines (HPCP chroma, Qmax, 2D-FTM) need essentia, which is not "
            f"installed: `{ESSENTIA_INSTALL_HINT}` (or install csi with the `dev` extra)"
        ) from error
    return essentia_standard


@dataclass(frozen=True)
class HPCPConfig:
    """Parameters of the frame-level HPCP chain (defaults: Da-TACOS / essentia tutorial, see module doc)."""

    sample_rate: int = 44100  # Hz; input audio is resampled to this rate
    frame_size: int = 4096  # samples
    hop_size: int = 512  # samples
    window: str = "blackmanharris62"
    max_peaks: int = 100
    magnitude_threshold: float = 0.0
    whitening: bool = True
    min_frequency: float = 100.0  # Hz
    max_frequency: float = 3500.0  # Hz
    harmonics: int = 8
    non_linear: bool = False
    reference_frequency: float = 440.0  # Hz, the frequency of bin 0
    size: int = N_CHROMA

    @property
    def frame_period_s(self) -> float:
        """Seconds between consecutive HPCP frames."""
        return self.hop_size / self.sample_rate

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.frame_size <= 0 or self.hop_size <= 0:
            raise ValueError(f"HPCPConfig: sample_rate, frame_size and hop_size must be positive: {self}")
        if not 0 < self.min_frequency < self.max_frequency <= self.sample_rate / 2:
            raise ValueError(
                f"HPCPConfig: need 0 < min_frequency < max_frequency <= Nyquist ({self.sample_rate / 2} Hz), "
                f"got {self.min_frequency} and {self.max_frequency}"
            )
        if self.size != N_CHROMA:
            raise ValueError(f"HPCPConfig: only {N_CHROMA}-bin chroma is supported, got size={self.size}")


DEFAULT_HPCP = HPCPConfig()


def _as_mono_float32(waveform: np.ndarray, what: str = "waveform") -> np.ndarray:
    """Validate audio: [n] or [n, channels], finite, non-empty; return mono float32 [n]."""
    audio = np.asarray(waveform)
    if audio.dtype.kind not in "fiu":
        raise TypeError(f"{what}: expected a real-valued array, got dtype {audio.dtype}")
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    elif audio.ndim != 1:
        raise ValueError(f"{what}: expected shape [n] or [n, channels], got {audio.shape}")
    if audio.size == 0:
        raise ValueError(f"{what}: audio is empty")
    audio = audio.astype(np.float32, copy=False)
    if not np.all(np.isfinite(audio)):
        raise ValueError(f"{what}: audio contains NaN or Inf samples")
    return audio


def _resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {from_rate}")
    if from_rate == to_rate:
        return audio
    import soxr

    return np.asarray(soxr.resample(audio, from_rate, to_rate, quality="HQ"), dtype=np.float32)


def hpcp(waveform: np.ndarray, sample_rate: int, config: HPCPConfig = DEFAULT_HPCP) -> np.ndarray:
    """Frame-level HPCP chroma of one recording.

    waveform: audio [n] or [n, channels] (mixed to mono) at ``sample_rate`` Hz, any real dtype;
        resampled to ``config.sample_rate`` when different.
    Returns float32 [T, 12], T = ceil(n' / hop) + 1 where n' is the resampled length; frame t is
    centred at t * config.frame_period_s seconds; bin 0 is A (440 Hz), each frame scaled to max 1
    (all-zero frames where there are no spectral peaks, e.g. silence).
    Raises ValueError for empty, non-finite or entirely silent audio.
    """
    es = require_essentia()
    audio = _resample(_as_mono_float32(waveform), int(sample_rate), config.sample_rate)
    if not np.any(audio):
        raise ValueError("audio is silent (all samples are zero): no chroma to compute")

    windowing = es.Windowing(type=config.window)
    spectrum = es.Spectrum()
    peaks = es.SpectralPeaks(
        magnitudeThreshold=config.magnitude_threshold,
        maxFrequency=config.max_frequency,
        minFrequency=config.min_frequency,
        maxPeaks=config.max_peaks,
        orderBy="frequency",
        sampleRate=config.sample_rate,
    )
    whitening = es.SpectralWhitening(maxFrequency=config.max_frequency, sampleRate=config.sample_rate)
    hpcp_algorithm = es.HPCP(
        size=config.size,
        referenceFrequency=config.reference_frequency,
        harmonics=config.harmonics,
        nonLinear=config.non_linear,
        minFrequency=config.min_frequency,
        maxFrequency=config.max_frequency,
        sampleRate=config.sample_rate,
        normalized="unitMax",
    )
    frames = []
    for frame in es.FrameGenerator(audio, frameSize=config.frame_size, hopSize=config.hop_size):
        magnitude_spectrum = spectrum(windowing(frame))
        frequencies, magnitudes = peaks(magnitude_spectrum)
        if config.whitening:
            magnitudes = whitening(magnitude_spectrum, frequencies, magnitudes)
        frames.append(hpcp_algorithm(frequencies, magnitudes))
    chroma = np.asarray(frames, dtype=np.float32).reshape(-1, config.size)
    if not np.any(chroma):
        raise ValueError(
            f"audio has no spectral peaks between {config.min_frequency} and {config.max_frequency} Hz "
            "(silent or pitchless): no chroma to compute"
        )
    return chroma


def beat_times(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Beat positions in seconds from essentia's RhythmExtractor2013 (multifeature beat tracker).

    waveform: audio [n] or [n, channels] at ``sample_rate`` Hz (resampled to 44.1 kHz, the only
    rate the tracker supports). Returns float64 [B], strictly increasing.
    Raises ValueError when fewer than two beats are found.
    """
    es = require_essentia()
    audio = _resample(_as_mono_float32(waveform), int(sample_rate), BEAT_TRACKER_SAMPLE_RATE)
    _bpm, ticks, _confidence, _estimates, _intervals = es.RhythmExtractor2013(method="multifeature")(audio)
    beats = np.unique(np.asarray(ticks, dtype=np.float64))
    if beats.size < 2:
        raise ValueError(f"beat tracker found {beats.size} beat(s); beat-synchronous chroma needs at least 2")
    return beats


def beat_synchronous_chroma(
    frames: np.ndarray,
    frame_period_s: float,
    beats_s: np.ndarray,
    duration_s: float,
    aggregate: Literal["mean", "median"] = "mean",
) -> np.ndarray:
    """Aggregate frame chroma between beats into one chroma vector per beat.

    frames: [T, 12] chroma, frame t centred at t * frame_period_s seconds.
    beats_s: [B] increasing beat times (s). Beat b covers [beats_s[b], beats_s[b + 1]), the last
        beat covers [beats_s[-1], duration_s]; anything before the first beat is dropped.
    aggregate: "mean" (the MSD beat-chroma: average over the beat) or "median" (Da-TACOS).
    A beat shorter than one frame takes the frame nearest its centre. Each beat vector is then
    scaled to max 1 (all-zero beats stay zero), as in the MSD beat-chroma.
    Returns float32 [B, 12].
    """
    chroma = np.asarray(frames, dtype=np.float64)
    if chroma.ndim != 2 or chroma.shape[1] != N_CHROMA or chroma.shape[0] == 0:
        raise ValueError(f"frames: expected shape [T, {N_CHROMA}] with T > 0, got {chroma.shape}")
    beats = np.asarray(beats_s, dtype=np.float64)
    if beats.ndim != 1 or beats.size == 0 or not np.all(np.isfinite(beats)) or np.any(np.diff(beats) <= 0):
        raise ValueError("beats_s: expected a non-empty, finite, strictly increasing 1-D array of times")
    if frame_period_s <= 0:
        raise ValueError(f"frame_period_s must be positive, got {frame_period_s}")
    if aggregate not in ("mean", "median"):
        raise ValueError(f"aggregate must be 'mean' or 'median', got {aggregate!r}")

    frame_times = np.arange(chroma.shape[0]) * frame_period_s
    ends = np.append(beats[1:], max(float(duration_s), beats[-1]))
    first = np.searchsorted(frame_times, beats, side="left")
    last = np.searchsorted(frame_times, ends, side="left")
    out = np.empty((beats.size, N_CHROMA), dtype=np.float64)
    for b in range(beats.size):
        if last[b] > first[b]:
            segment = chroma[first[b] : last[b]]
            out[b] = segment.mean(axis=0) if aggregate == "mean" else np.median(segment, axis=0)
        else:
            centre = 0.5 * (beats[b] + ends[b])
            out[b] = chroma[min(round(centre / frame_period_s), chroma.shape[0] - 1)]
    peak = out.max(axis=1, keepdims=True)
    np.divide(out, peak, out=out, where=peak > 0)
    return out.astype(np.float32)


def downsample_hpcp(frames: np.ndarray, factor: int = QMAX_DOWNSAMPLE_FACTOR) -> np.ndarray:
    """Median over consecutive blocks of ``factor`` frames (the last block may be shorter).

    frames: [T, 12]. Returns float32 [ceil(T / factor), 12]. Da-TACOS feeds Qmax HPCP at hop 512
    (44.1 kHz) downsampled this way by 40, i.e. ≈ 0.46 s per frame.
    """
    chroma = np.asarray(frames, dtype=np.float32)
    if chroma.ndim != 2 or chroma.shape[0] == 0:
        raise ValueError(f"frames: expected shape [T, bins] with T > 0, got {chroma.shape}")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    starts = np.arange(0, chroma.shape[0], factor)
    return np.stack([np.median(chroma[s : s + factor], axis=0) for s in starts]).astype(np.float32)


@dataclass(frozen=True)
class TrackChroma:
    """The two chroma views of one recording.

    qmax_hpcp: float32 [T, 12], HPCP downsampled for Qmax (≈ 0.46 s per frame by default).
    beat_chroma: float32 [B, 12] beat-synchronous chroma for 2D-FTM, or None when not requested.
    duration_s: length of the audio in seconds.
    """

    qmax_hpcp: np.ndarray
    beat_chroma: np.ndarray | None
    duration_s: float


def track_chroma(
    waveform: np.ndarray,
    sample_rate: int,
    config: HPCPConfig = DEFAULT_HPCP,
    downsample: int = QMAX_DOWNSAMPLE_FACTOR,
    beats: bool = True,
) -> TrackChroma:
    """HPCP once, then both views: downsampled HPCP (Qmax) and, if ``beats``, beat chroma (2D-FTM)."""
    audio = _as_mono_float32(waveform)
    duration_s = audio.shape[0] / float(sample_rate)
    frames = hpcp(audio, sample_rate, config)
    beat_chroma = None
    if beats:
        beat_chroma = beat_synchronous_chroma(
            frames, config.frame_period_s, beat_times(audio, sample_rate), duration_s
        )
    return TrackChroma(downsample_hpcp(frames, downsample), beat_chroma, duration_s)


def load_audio(path: str | os.PathLike[str], sample_rate: int) -> np.ndarray:
    """Decode an audio file with soundfile, mix to mono, resample to ``sample_rate`` Hz (soxr).

    Returns float32 [n]. Raises ValueError naming the file for undecodable, empty or non-finite audio.
    """
    import soundfile

    try:
        data, file_rate = soundfile.read(os.fspath(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        raise ValueError(f"{path}: cannot decode audio ({error})") from error
    try:
        audio = _as_mono_float32(data, what=str(path))
    except (ValueError, TypeError) as error:
        raise ValueError(str(error)) from error
    return _resample(audio, int(file_rate), int(sample_rate))


@dataclass
class ChromaForFiles:
    """Result of ``chroma_for_files``: one entry per input path, None where the file failed."""

    tracks: list[TrackChroma | None]
    failures: dict[str, str] = field(default_factory=dict)  # path → reason


def _chroma_for_file(
    job: tuple[str, int, HPCPConfig, int, bool],
) -> tuple[TrackChroma | None, str | None]:
    path, sample_rate, config, downsample, beats = job
    try:
        audio = load_audio(path, sample_rate)
        return track_chroma(audio, sample_rate, config, downsample, beats), None
    except ImportError:
        raise
    except Exception as error:  # a broken file is reported, not fatal
        return None, f"{type(error).__name__}: {error}"


def chroma_for_files(
    paths: Sequence[str | os.PathLike[str]],
    sample_rate: int = 44100,
    workers: int = 1,
    config: HPCPConfig | None = None,
    downsample: int = QMAX_DOWNSAMPLE_FACTOR,
    beats: bool = True,
    progress: ProgressCallback | None = None,
) -> ChromaForFiles:
    """Load audio files and compute their chroma views (see ``track_chroma``).

    paths: audio files soundfile can decode (WAV, FLAC, OGG, MP3 with libsndfile >= 1.1).
    sample_rate: analysis rate in Hz (audio is resampled to it; 44100 as in Serra et al. and
        Da-TACOS). ``config`` defaults to ``HPCPConfig(sample_rate=sample_rate)``.
    workers: processes (fork start method where available); 1 runs in this process.
    Files that cannot be decoded or analysed (empty, silent, no beats, ...) get None in ``tracks``
    and a reason in ``failures``; they are logged as warnings.
    """
    require_essentia()
    if config is None:
        config = HPCPConfig(sample_rate=int(sample_rate))
    elif config.sample_rate != sample_rate:
        raise ValueError(f"config.sample_rate ({config.sample_rate}) != sample_rate ({sample_rate})")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    jobs = [(os.fspath(p), int(sample_rate), config, int(downsample), bool(beats)) for p in paths]
    result = ChromaForFiles(tracks=[None] * len(jobs))

    def record(index: int, outcome: tuple[TrackChroma | None, str | None], done: int) -> None:
        track, reason = outcome
        result.tracks[index] = track
        if reason is not None:
            result.failures[jobs[index][0]] = reason
            logger.warning("chroma: skipping %s: %s", jobs[index][0], reason)
        if progress is not None:
            progress(done, len(jobs))

    if workers == 1 or len(jobs) <= 1:
        for index, job in enumerate(jobs):
            record(index, _chroma_for_file(job), index + 1)
        return result
    with process_pool(min(workers, len(jobs))) as pool:
        indexed = pool.imap_unordered(_indexed_chroma_for_file, list(enumerate(jobs)))
        for done, (index, outcome) in enumerate(indexed, start=1):
            record(index, outcome, done)
    return result


def _indexed_chroma_for_file(
    item: tuple[int, tuple[str, int, HPCPConfig, int, bool]],
) -> tuple[int, tuple[TrackChroma | None, str | None]]:
    index, job = item
    return index, _chroma_for_file(job)


def process_pool(
    workers: int, initializer: Callable[..., None] | None = None, initargs: tuple[object, ...] = ()
) -> multiprocessing.pool.Pool:
    """A process pool using fork where the platform has it (workers inherit the parent's memory)."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return context.Pool(processes=workers, initializer=initializer, initargs=initargs)
