"""Production effects for rendered versions: room, EQ, noise, codec, loudness.

All linear parts of the chain (EQ tilt, reverb, the "lowpass" codec) are folded into one FIR
filter applied with one FFT convolution. Reverb impulse responses are synthetic: exponentially
decaying noise whose high band decays faster than its low band, after a pre-delay and a few
early reflections. Noise is white, pink, brown or babble-like (speech-shaped noise under the
syllabic envelopes of a few talkers) at a given SNR. The codec is a real MP3 round trip through
ffmpeg for the offline corpus, or a cheap stand-in for the online path (band limit + per-frame
spectral quantisation that drops what falls below the frame's dynamic range, as perceptual
coders do at low bitrates).

Waveforms are float32 [n] mono; rates in Hz; levels in dB.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import TYPE_CHECKING

import numpy as np
from scipy import signal

if TYPE_CHECKING:
    from csi_training.render.versions import VersionParams

log = logging.getLogger(__name__)

RT60_DB = 60.0
IR_TAIL_DB = 70.0  # impulse responses are cut where they are this far down
HF_SPLIT_HZ = 2000.0
EQ_FIR_TAPS = 513
PEAK_CEILING = 0.99
FFMPEG_TIMEOUT_S = 120.0
MP3_MAX_LAG = 4096  # samples of encoder + decoder delay searched when aligning the MP3 round trip


class FFmpegError(RuntimeError):
    """ffmpeg is missing or failed."""


def rms_db(x: np.ndarray) -> float:
    """Root-mean-square level in dBFS (-inf for silence)."""
    power = float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0
    return 10.0 * np.log10(power) if power > 0 else -np.inf


def _check(x: np.ndarray, sample_rate: int) -> np.ndarray:
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected a mono waveform [n], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("waveform contains NaN or Inf")
    return x


# ---------------------------------------------------------------------------------------------
# Linear filters


def reverb_ir(
    sample_rate: int,
    rt60_s: float,
    rng: np.random.Generator,
    predelay_s: float = 0.01,
    hf_rt60_ratio: float = 0.5,
    n_reflections: int = 6,
) -> np.ndarray:
    """A synthetic room impulse response, float32 [n], unit energy, no direct sound.

    The late tail is Gaussian noise decaying 60 dB in rt60_s below HF_SPLIT_HZ and in
    rt60_s·hf_rt60_ratio above (air and wall absorption), cut IR_TAIL_DB down; a few early
    reflections in the first 50 ms precede it.
    """
    if rt60_s <= 0:
        raise ValueError(f"rt60_s must be > 0, got {rt60_s}")
    n = int((predelay_s + rt60_s * IR_TAIL_DB / RT60_DB) * sample_rate) + 1
    t = np.arange(n) / sample_rate
    noise = rng.standard_normal(n)
    spec = np.fft.rfft(noise)
    low_mask = np.fft.rfftfreq(n, 1 / sample_rate) < HF_SPLIT_HZ
    low = np.fft.irfft(spec * low_mask, n)
    high = noise - low
    decay = np.log(10.0) * RT60_DB / 20.0  # amplitude exp(-decay·t/rt60) is -60 dB at rt60
    late = low * np.exp(-decay * t / rt60_s) + high * np.exp(-decay * t / (rt60_s * hf_rt60_ratio))
    pre = int(predelay_s * sample_rate)
    late[:pre] = 0.0
    # the late tail builds up over the first ~20 ms
    late *= np.minimum(np.maximum(t - predelay_s, 0.0) / 0.02, 1.0)
    for _ in range(n_reflections):
        tap = pre + int(rng.uniform(0.002, 0.05) * sample_rate)
        if tap < n:
            late[tap] += rng.choice((-1.0, 1.0)) * rng.uniform(2.0, 6.0) * np.exp(-decay * t[tap] / rt60_s)
    return (late / np.sqrt(np.sum(late**2))).astype(np.float32)


def _fir_from_response(gain: np.ndarray, n_taps: int) -> np.ndarray:
    """Linear-phase FIR [n_taps] (odd) from a zero-phase magnitude response on rfftfreq(2·(len-1))."""
    h = np.fft.irfft(gain)
    h = np.roll(h, n_taps // 2)[:n_taps]
    return h * np.hanning(n_taps + 2)[1:-1]


def eq_fir(sample_rate: int, tilt_db_per_octave: float = 0.0, lowpass_hz: float = 0.0) -> np.ndarray:
    """Linear-phase FIR [EQ_FIR_TAPS] for a spectral tilt around 1 kHz and an optional steep low-pass."""
    n_fft = 4096
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    gain_db = tilt_db_per_octave * np.log2(np.clip(freqs, 50.0, None) / 1000.0)
    gain = 10.0 ** (gain_db / 20.0)
    if lowpass_hz > 0:
        gain /= np.sqrt(1.0 + (freqs / lowpass_hz) ** 16)  # 8th-order Butterworth magnitude
    return _fir_from_response(gain, EQ_FIR_TAPS).astype(np.float32)


def linear_chain(
    x: np.ndarray,
    sample_rate: int,
    rt60_s: float,
    wet: float,
    tilt_db_per_octave: float,
    lowpass_hz: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """EQ tilt, low-pass and reverb ((1 - wet)·dry + wet·reverberated) in one convolution; same length."""
    x = _check(x, sample_rate)
    h, delay = np.ones(1, dtype=np.float32), 0
    if tilt_db_per_octave or lowpass_hz:
        h, delay = eq_fir(sample_rate, tilt_db_per_octave, lowpass_hz), EQ_FIR_TAPS // 2
    if rt60_s > 0 and wet > 0:
        room = np.float32(wet) * reverb_ir(sample_rate, rt60_s, rng)
        room[0] += np.float32(1.0 - wet)
        h = signal.fftconvolve(room, h) if len(h) > 1 else room
    if len(h) == 1:
        return x
    # float32 FFTs: twice as fast, and 1e-7 relative error is far below any codec or noise here
    return signal.fftconvolve(x, h.astype(np.float32))[delay : delay + len(x)].astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Noise


def make_noise(kind: str, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise [n]: "white", "pink" (-3 dB/octave), "brown" (-6 dB/octave) or "babble"."""
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    white = rng.standard_normal(n)
    if kind == "white":
        y = white
    elif kind == "pink":  # Paul Kellet's economy filter: within 0.5 dB of -3 dB/octave above 10 Hz
        b = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
        a = [1.0, -2.494956002, 2.017265875, -0.522189400]
        y = signal.lfilter(b, a, white)
    elif kind == "brown":
        y = signal.lfilter([1.0], [1.0, -0.995], white)
        y = signal.lfilter([1.0, -1.0], [1.0, -0.9999], y)  # remove the drift below a few Hz
    elif kind == "babble":
        y = _babble(white, sample_rate, rng)
    else:
        raise ValueError(f"unknown noise kind {kind!r}; expected white, pink, brown or babble")
    y = y - np.mean(y)
    return (y / (np.sqrt(np.mean(y**2)) + 1e-12)).astype(np.float32)


def _babble(white: np.ndarray, sample_rate: int, rng: np.random.Generator, talkers: int = 4) -> np.ndarray:
    """Speech-shaped noise (band 150-4000 Hz, -6 dB/octave above 600 Hz) under summed syllabic
    envelopes (3-6 Hz) of a few talkers with pauses."""
    nyq = sample_rate / 2
    sos = signal.butter(2, [150.0 / nyq, min(4000.0, 0.9 * nyq) / nyq], btype="band", output="sos")
    shaped = signal.sosfilt(sos, white)
    shaped = signal.lfilter([1.0], [1.0, -np.exp(-2 * np.pi * 600.0 / sample_rate)], shaped)
    n = len(white)
    control_rate = 100.0
    m = int(n / sample_rate * control_rate) + 2
    envelope = np.zeros(m)
    for _ in range(talkers):
        syllable_hz = rng.uniform(3.0, 6.0)
        phase = np.cumsum(rng.uniform(0.6, 1.4, m) * syllable_hz / control_rate)
        talk = np.maximum(np.sin(2 * np.pi * phase), 0.0) ** 2
        pauses = signal.lfilter([0.02], [1.0, -0.98], rng.standard_normal(m)) > -0.05  # talk ~ 60 %
        envelope += talk * pauses * rng.uniform(0.5, 1.0)
    envelope = np.interp(np.arange(n) / sample_rate * control_rate, np.arange(m), envelope + 0.05)
    return shaped * envelope


def add_noise(
    x: np.ndarray, snr_db: float, kind: str, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """x + noise of the given kind whose power is snr_db below x's mean power."""
    x = _check(x, sample_rate)
    if not np.isfinite(snr_db):
        return x
    power = float(np.mean(np.square(x, dtype=np.float64)))
    if power == 0:
        raise ValueError("cannot set an SNR against a silent signal")
    noise = make_noise(kind, len(x), sample_rate, rng).astype(np.float64)
    noise *= np.sqrt(power / 10.0 ** (snr_db / 10.0))
    return (x + noise).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Level


def normalize_loudness(x: np.ndarray, target_dbfs: float) -> np.ndarray:
    """Scale to an RMS level of target_dbfs (silence is returned unchanged)."""
    level = rms_db(x)
    if not np.isfinite(level):
        return np.asarray(x, dtype=np.float32)
    return (np.asarray(x, np.float64) * 10.0 ** ((target_dbfs - level) / 20.0)).astype(np.float32)


def limit_peak(x: np.ndarray, ceiling: float = PEAK_CEILING) -> np.ndarray:
    """Scale down so no sample exceeds the ceiling (leaves quieter signals as they are)."""
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak <= ceiling:
        return np.asarray(x, dtype=np.float32)
    return (np.asarray(x, np.float64) * (ceiling / peak)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Codecs


def find_ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise FFmpegError("ffmpeg not found on PATH; install it (Debian/Ubuntu: apt install ffmpeg)")
    return path


def _run_ffmpeg(args: list[str], data: bytes, timeout_s: float) -> bytes:
    cmd = [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin", *args]
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FFmpegError(f"ffmpeg timed out after {timeout_s:.0f} s: {' '.join(cmd)}") from exc
    if proc.returncode != 0:
        raise FFmpegError(
            f"ffmpeg failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()[-500:]}"
        )
    return proc.stdout


def mp3_roundtrip(
    x: np.ndarray, sample_rate: int, kbps: int, timeout_s: float = FFMPEG_TIMEOUT_S
) -> np.ndarray:
    """Encode to MP3 at kbps (LAME through ffmpeg) and decode back; aligned, same length as x."""
    x = _check(x, sample_rate)
    if len(x) == 0:
        return x
    fmt = ["-f", "f32le", "-ar", str(sample_rate), "-ac", "1"]
    encode = [*fmt, "-i", "pipe:0", "-c:a", "libmp3lame", "-b:a", f"{kbps}k", "-f", "mp3", "pipe:1"]
    encoded = _run_ffmpeg(encode, x.tobytes(), timeout_s)
    decoded = _run_ffmpeg(["-f", "mp3", "-i", "pipe:0", *fmt, "pipe:1"], encoded, timeout_s)
    y = np.frombuffer(decoded, dtype="<f4").astype(np.float32)
    lag = _delay(x, y)
    y = y[lag : lag + len(x)]
    if len(y) < len(x):
        y = np.concatenate([y, np.zeros(len(x) - len(y), np.float32)])
    return y


def _delay(reference: np.ndarray, delayed: np.ndarray) -> int:
    """The lag in 0..MP3_MAX_LAG that best aligns `delayed` with `reference` (cross-correlation)."""
    n = min(len(reference), len(delayed) - MP3_MAX_LAG, 1 << 17)
    if n <= 0:
        return 0
    ref = reference[:n].astype(np.float64)
    seg = delayed[: n + MP3_MAX_LAG].astype(np.float64)
    corr = signal.correlate(seg, ref, mode="valid", method="fft")
    return int(np.argmax(corr))


# Approximate codec: frame size/hop of the spectral quantiser, and per-bitrate (band limit Hz,
# dynamic range kept below each frame's peak bin in dB).
APPROX_FRAME = 512
_APPROX_PROFILE = ((24, 5000.0, 28.0), (32, 6000.0, 34.0), (48, 7000.0, 40.0), (64, 7500.0, 46.0),
                   (96, 8000.0, 54.0), (128, 8000.0, 60.0))  # fmt: skip


def codec_approx(x: np.ndarray, sample_rate: int, kbps: int) -> np.ndarray:
    """A cheap stand-in for a perceptual codec at kbps: band-limit, drop spectral components more
    than a bitrate-dependent range below each frame's peak, quantise the rest (log-magnitude
    steps); sqrt-Hann STFT with 50 % overlap (perfect reconstruction when nothing is changed)."""
    x = _check(x, sample_rate)
    if len(x) == 0:
        return x
    profile = min(_APPROX_PROFILE, key=lambda p: abs(p[0] - kbps))
    cutoff, dyn_db = min(profile[1], 0.5 * sample_rate), profile[2]
    hop = APPROX_FRAME // 2
    window = np.sqrt(np.hanning(APPROX_FRAME + 1)[:-1]).astype(np.float32)
    n_frames = int(np.ceil(len(x) / hop)) + 1
    padded = np.zeros((n_frames + 1) * hop, dtype=np.float32)
    padded[hop : hop + len(x)] = x
    frames = np.lib.stride_tricks.sliding_window_view(padded, APPROX_FRAME)[::hop][:n_frames] * window
    spec = np.fft.rfft(frames, axis=1)
    mag = np.abs(spec)
    freqs = np.fft.rfftfreq(APPROX_FRAME, 1 / sample_rate)
    peak = mag.max(axis=1, keepdims=True) + 1e-12
    keep = (mag >= peak * 10.0 ** (-dyn_db / 20.0)) & (freqs <= cutoff)[None, :]
    step_db = 3.0 * 28.0 / dyn_db  # coarser steps at lower bitrates
    level = np.round(20.0 * np.log10(mag / peak + 1e-12) / step_db) * step_db
    spec = np.where(keep, spec / (mag + 1e-12) * peak * 10.0 ** (level / 20.0), 0.0)
    out_frames = np.fft.irfft(spec, n=APPROX_FRAME, axis=1).astype(np.float32) * window
    out = np.zeros_like(padded)
    for k in range(2):  # overlap-add in two interleaved passes of non-overlapping frames
        sel = out_frames[k::2]
        start = k * hop
        block = sel.reshape(-1)
        out[start : start + len(block)] += block[: len(out) - start]
    return out[hop : hop + len(x)]


# ---------------------------------------------------------------------------------------------
# The whole production of a version


def produce(
    x: np.ndarray, sample_rate: int, params: VersionParams, rng: np.random.Generator, offline: bool = True
) -> np.ndarray:
    """Apply a version's production to a dry mix: EQ/low-pass/reverb → loudness → noise → codec →
    peak limit. offline=True encodes MP3 with ffmpeg; False uses `codec_approx` (no subprocess)."""
    x = _check(x, sample_rate)
    if len(x) == 0 or not np.any(x):
        raise ValueError("cannot produce a version from a silent mix")
    lowpass = params.lowpass_hz if params.codec == "lowpass" else 0.0
    y = linear_chain(x, sample_rate, params.reverb_rt60_s, params.reverb_wet, params.eq_tilt_db, lowpass, rng)
    y = normalize_loudness(y, params.loudness_dbfs)
    if params.noise != "none":
        y = add_noise(y, params.noise_snr_db, params.noise, sample_rate, rng)
    if params.codec == "mp3":
        y = (
            mp3_roundtrip(limit_peak(y), sample_rate, params.codec_kbps)
            if offline
            else codec_approx(y, sample_rate, params.codec_kbps)
        )
    return limit_peak(y)
