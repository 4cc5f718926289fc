"""Streaming audio sources for monitors: files, raw PCM pipes and live URLs → Chunk / Gap events.

Iterating a source yields, in stream order:

- ``Chunk(samples, start_s, wall_utc)``: float32 [n] mono at the source's ``sample_rate``,
  n = ``chunk_s`` seconds (except the last chunk before a Gap or at the end); ``start_s`` is the
  position of its first sample in the stream (seconds since the source started, gaps included);
  ``wall_utc`` the UTC time at which that sample was captured or read.
- ``Gap(start_s, duration_s, reason)``: the audio is discontinuous here (a stream dropped and was
  restarted): ``duration_s`` seconds of wall-clock time were lost and the next chunk starts at
  ``start_s + duration_s``. Whatever keeps context across chunks (a streaming embedder) resets.

Channels are mixed down by their mean and the rate is converted by one soxr HQ stream per
decode, continuous across chunk boundaries: the mixdown and resampler of ``load_audio``, so a file
streamed by :class:`FileSource` gives exactly the samples ``load_audio`` returns for it, without
ever holding more than a few blocks of it in memory.

Every source is a context manager and iterates once; ``close()`` may be called from any thread
(the iteration then ends at its next step) and kills a running ffmpeg, which is always reaped.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, TypeAlias

import numpy as np
import soundfile
import soxr

from csi_runtime.audio import (
    FFMPEG_INSTALL_HINT,
    FFMPEG_TIMEOUT_S,
    MAX_CHANNELS,
    SOUNDFILE_EXTENSIONS,
    AudioDecodeError,
    AudioError,
    EmptyAudioError,
    FFmpegMissingError,
    NonFiniteAudioError,
    check_local_file,
    check_sample_rate,
    ffmpeg_decode_command,
    ffmpeg_missing,
    is_url,
    parse_wav_header,
    resampled_length,
    tail,
    to_float32,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PCM_FORMATS",
    "AudioSource",
    "Chunk",
    "FFmpegSource",
    "FileSource",
    "Gap",
    "PCMSource",
    "SourceEvent",
    "StreamError",
]

# Raw PCM sample formats PCMSource reads (name → little-endian numpy dtype).
PCM_FORMATS = {"s16le": "<i2", "s32le": "<i4", "f32le": "<f4"}
# Bytes asked of a pipe per read, and how many such blocks a reader thread may hold ahead of its
# consumer (backpressure: a decoder faster than its consumer waits instead of filling memory).
_READ_BLOCK_BYTES = 1 << 16
_QUEUE_BLOCKS = 64
# Frames per soundfile read (256 KiB per channel as float32).
_FILE_BLOCK_FRAMES = 1 << 16
# ffmpeg's WAV header is under 100 bytes; this much output without a 'data' chunk is garbage.
_MAX_WAV_HEADER_BYTES = 1 << 16
# How long a finished ffmpeg may take to exit after closing its output before it is killed.
_EXIT_GRACE_S = 5.0
# Poll interval while a non-blocking PCM stream has no data.
_PCM_IDLE_POLL_S = 0.01


@dataclass(frozen=True, eq=False)
class Chunk:
    """Audio: ``samples`` float32 [n] at the source's rate; ``start_s`` stream position of the first
    sample (seconds, gaps included); ``wall_utc`` UTC time at which the first sample was captured/read."""

    samples: np.ndarray
    start_s: float
    wall_utc: datetime


@dataclass(frozen=True)
class Gap:
    """A discontinuity: ``duration_s`` seconds lost from stream position ``start_s`` on, and why."""

    start_s: float
    duration_s: float
    reason: str


SourceEvent: TypeAlias = Chunk | Gap


class StreamError(AudioError, RuntimeError):
    """A live stream failed and could not be (re)started within the source's reconnect policy."""


# ---------------------------------------------------------------------------------------------
# building blocks


class _StreamResampler:
    """soxr HQ over a mono float32 stream, continuous across blocks; in total exactly
    round(n_in * rate_out / rate_in) samples, like ``csi_runtime.audio.resample``."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in, self.rate_out = rate_in, rate_out
        self._stream = (
            None if rate_in == rate_out else soxr.ResampleStream(rate_in, rate_out, 1, "float32", "HQ")
        )
        self._n_in = 0
        self._n_out = 0

    def process(self, x: np.ndarray) -> np.ndarray:
        """x: float32 [n] at rate_in → float32 [m] at rate_out (m lags by the filter's delay)."""
        self._n_in += x.shape[0]
        out = x if self._stream is None else self._stream.resample_chunk(x, last=False)
        self._n_out += out.shape[0]
        return out

    def finish(self) -> np.ndarray:
        """The delayed tail, trimmed or zero-padded so that the total has the exact length."""
        if self._stream is None:
            return np.zeros(0, np.float32)
        out = self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
        want = resampled_length(self._n_in, self.rate_in, self.rate_out) - self._n_out
        if want <= 0:
            return np.zeros(0, np.float32)
        if out.shape[0] >= want:
            return np.ascontiguousarray(out[:want])
        return np.concatenate([out, np.zeros(want - out.shape[0], np.float32)])


class _ChunkAssembler:
    """Cuts a sample stream into chunks of ``chunk_samples`` and stamps their position and wall time."""

    def __init__(self, sample_rate: int, chunk_samples: int) -> None:
        self.sample_rate = sample_rate
        self._buf = np.empty(chunk_samples, np.float32)
        self._fill = 0
        self._emitted = 0  # samples in the chunks already returned
        self._gaps_s = 0.0  # seconds of gaps so far
        self._anchor_utc: datetime | None = None
        self._anchor_s = 0.0

    @property
    def next_start_s(self) -> float:
        """Stream position of the next chunk's first sample."""
        return self._emitted / self.sample_rate + self._gaps_s

    @property
    def anchored(self) -> bool:
        return self._anchor_utc is not None

    def anchor(self, wall_utc: datetime, position_s: float) -> None:
        """From now on, stream position ``position_s`` was captured at ``wall_utc``."""
        self._anchor_utc, self._anchor_s = wall_utc, position_s

    def push(self, x: np.ndarray) -> list[Chunk]:
        """x: float32 [n]; returns the chunks it completes."""
        chunks = []
        size = self._buf.shape[0]
        i = 0
        while i < x.shape[0]:
            take = min(size - self._fill, x.shape[0] - i)
            self._buf[self._fill : self._fill + take] = x[i : i + take]
            self._fill += take
            i += take
            if self._fill == size:
                chunks.append(self._make(self._buf.copy()))
                self._fill = 0
        return chunks

    def flush(self) -> Chunk | None:
        """The partial chunk held back, if any."""
        if self._fill == 0:
            return None
        chunk = self._make(self._buf[: self._fill].copy())
        self._fill = 0
        return chunk

    def gap(self, duration_s: float, reason: str) -> Gap:
        """A Gap at the current position (call ``flush`` first); the position advances by it."""
        assert self._fill == 0, "flush before a gap"
        event = Gap(self.next_start_s, duration_s, reason)
        self._gaps_s += duration_s
        return event

    def _make(self, samples: np.ndarray) -> Chunk:
        assert self._anchor_utc is not None, "anchor before pushing audio"
        start_s = self.next_start_s
        wall = self._anchor_utc + timedelta(seconds=start_s - self._anchor_s)
        self._emitted += samples.shape[0]
        return Chunk(samples, start_s, wall)


class _WavStreamParser:
    """The float32 WAV that ffmpeg writes to a pipe, fed in arbitrary byte blocks → [n, channels] frames."""

    def __init__(self) -> None:
        self._pending = b""
        self.channels = 0
        self.rate = 0

    @property
    def started(self) -> bool:
        return self.channels > 0

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def feed(self, data: bytes) -> np.ndarray:
        """float32 [n, channels] frames completed by ``data`` (n may be 0). Raises ValueError on
        anything but a float32 WAV stream."""
        buf = self._pending + data if self._pending else data
        if not self.started:
            header = parse_wav_header(buf)
            if header is None:
                if len(buf) > _MAX_WAV_HEADER_BYTES:
                    raise ValueError(f"no 'data' chunk in the first {_MAX_WAV_HEADER_BYTES} bytes")
                self._pending = buf
                return np.zeros((0, 1), np.float32)
            self.channels, self.rate, start = header
            buf = buf[start:]
        frame = 4 * self.channels
        usable = len(buf) - len(buf) % frame
        self._pending = buf[usable:]
        return np.frombuffer(buf, dtype="<f4", count=usable // 4).reshape(-1, self.channels)


class _FFmpegProcess:
    """One ffmpeg subprocess: stdout read by a thread into a bounded queue (so a stalled pipe
    cannot hang the consumer), stderr drained by another thread (so ffmpeg never blocks on it)."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
        )
        self.killed = False
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE_BLOCKS)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._eof = False
        self._stderr = bytearray()
        self._threads = [
            threading.Thread(target=self._pump_stdout, name="csi-ffmpeg-stdout", daemon=True),
            threading.Thread(target=self._drain_stderr, name="csi-ffmpeg-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump_stdout(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        try:
            while not self._stop.is_set():
                data = stream.read(_READ_BLOCK_BYTES)
                if not data:
                    break
                self._put(data)
        except (OSError, ValueError) as exc:  # the pipe was closed under us
            logger.debug("ffmpeg stdout reader stops: %s", exc)
        finally:
            self._put(None)

    def _put(self, item: bytes | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        with contextlib.suppress(queue.Full):  # stopping: wake a waiting consumer if there is room
            self._queue.put_nowait(None)

    def _drain_stderr(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        with contextlib.suppress(OSError, ValueError):
            while data := stream.read(4096):
                with self._lock:
                    self._stderr += data
                    del self._stderr[: -4 * _READ_BLOCK_BYTES]

    def read(self, timeout_s: float | None) -> bytes:
        """The next block of stdout; b"" once it has ended. Raises TimeoutError when nothing
        arrived for ``timeout_s`` seconds (None: wait for ever)."""
        if self._eof:
            return b""
        try:
            item = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"no output for {timeout_s:g} s") from None
        if item is None:
            self._eof = True
            return b""
        return item

    def stderr_text(self) -> str:
        with self._lock:
            return tail(self._stderr.decode("utf-8", errors="replace").strip())

    def close(self, grace_s: float = 0.0) -> int | None:
        """Lets ffmpeg exit by itself for up to ``grace_s`` seconds, then kills it; reaps it and
        joins the reader threads. Returns the exit status (negative: killed by that signal)."""
        with self._lock:
            already = self._stop.is_set()
            self._stop.set()
        if not already and grace_s > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace_s)
        if self.proc.poll() is None:
            self.killed = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        try:
            status = self.proc.wait(10.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - an unkillable process
            logger.error("ffmpeg (pid %d) did not exit after SIGKILL", self.proc.pid)
            status = None
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(5.0)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return status


def _start_ffmpeg(cmd: list[str], label: str) -> _FFmpegProcess:
    try:
        return _FFmpegProcess(cmd)
    except FileNotFoundError:
        raise FFmpegMissingError(f"{label}: {cmd[0]} disappeared; {FFMPEG_INSTALL_HINT}", label) from None
    except OSError as exc:
        raise AudioDecodeError(f"{label}: cannot start ffmpeg ({exc})", label, str(exc)) from None


def _mono_block(
    frames: np.ndarray, label: str, path: str | os.PathLike[str] | None, first_frame: int, rate: int
) -> np.ndarray:
    """frames: [n, channels] numeric at ``rate``, starting at frame ``first_frame`` of the source →
    float32 [n] (mean of the channels). Raises NonFiniteAudioError naming the source and the position."""
    samples = to_float32(frames, label)
    if frames.dtype.kind == "f":
        finite = np.isfinite(samples)
        if not finite.all():
            bad = int(samples.size - np.count_nonzero(finite))
            first = first_frame + int(np.argmin(finite.all(axis=1)))
            raise NonFiniteAudioError(
                f"{label}: {bad} NaN/Inf sample value(s) in a block, the first at sample {first} "
                f"({first / rate:.3f} s)",
                path,
            )
    if samples.shape[1] == 1:
        return np.ascontiguousarray(samples[:, 0])
    return samples.mean(axis=1, dtype=np.float32)


def _as_utc(start_utc: datetime | None) -> datetime | None:
    if start_utc is None:
        return None
    if not isinstance(start_utc, datetime):
        raise TypeError(f"start_utc must be a datetime or None, got {type(start_utc).__name__}")
    if start_utc.tzinfo is None or start_utc.utcoffset() is None:
        raise ValueError(f"start_utc must be timezone-aware (e.g. tzinfo=datetime.UTC), got {start_utc}")
    return start_utc.astimezone(UTC)


def _utc_now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------
# sources


class AudioSource(abc.ABC):
    """Base of the sources: events at ``sample_rate`` in chunks of ``chunk_s`` seconds.

    Iterate once (``for event in source``); a context manager; ``close()`` is thread-safe and
    idempotent, and also runs when the source is garbage-collected.
    """

    def __init__(self, sample_rate: int, chunk_s: float, start_utc: datetime | None = None) -> None:
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._iterated = False
        self.sample_rate = check_sample_rate(sample_rate)
        if isinstance(chunk_s, bool) or not isinstance(chunk_s, int | float) or not math.isfinite(chunk_s):
            raise ValueError(f"chunk_s must be a positive number of seconds, got {chunk_s!r}")
        if chunk_s <= 0 or round(chunk_s * self.sample_rate) < 1:
            raise ValueError(
                f"chunk_s must hold at least one sample at {self.sample_rate} Hz, got {chunk_s!r}"
            )
        self.chunk_s = float(chunk_s)
        self.chunk_samples = round(chunk_s * self.sample_rate)
        self.start_utc = _as_utc(start_utc)

    def __iter__(self) -> Iterator[SourceEvent]:
        with self._lock:
            if self._closed.is_set():
                raise ValueError(f"{self!r} is closed")
            if self._iterated:
                raise RuntimeError(f"{self!r} can be iterated only once; make a new source")
            self._iterated = True
        return self._events()

    @abc.abstractmethod
    def _events(self) -> Iterator[SourceEvent]:
        """The source's events, produced once (each subclass reads its own input)."""

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stops the source: a running iteration ends at its next step; subprocesses are killed and reaped."""
        with self._lock:
            self._closed.set()
        self._release()

    def _release(self) -> None:  # noqa: B027 - optional hook: most sources hold nothing to free
        """Frees what the source holds (called by close, possibly from another thread)."""

    def __enter__(self) -> AudioSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", None) is not None:
            with contextlib.suppress(Exception):
                self.close()


class _FFmpegOwner(AudioSource):
    """A source that runs ffmpeg subprocesses one after the other; close() kills the current one."""

    def __init__(self, sample_rate: int, chunk_s: float, start_utc: datetime | None = None) -> None:
        self._ffmpeg_process: _FFmpegProcess | None = None
        super().__init__(sample_rate, chunk_s, start_utc)

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The current (or last) ffmpeg subprocess, None before the first one starts."""
        current = self._ffmpeg_process
        return current.proc if current is not None else None

    def _spawn(self, cmd: list[str], label: str) -> _FFmpegProcess | None:
        """Starts ffmpeg unless the source is closed (then None)."""
        with self._lock:
            if self._closed.is_set():
                return None
            self._ffmpeg_process = _start_ffmpeg(cmd, label)
            return self._ffmpeg_process

    def _release(self) -> None:
        current = self._ffmpeg_process
        if current is not None:
            current.close()


class FileSource(_FFmpegOwner):
    """A local file (or a finite URL) decoded progressively into chunks at ``sample_rate``.

    path: anything ``load_audio`` reads: libsndfile formats are read in blocks of 65536 frames,
        others (and URLs) through an ffmpeg pipe; memory stays bounded whatever the length.
    sample_rate: output rate in Hz.
    chunk_s: seconds per Chunk (the last one may be shorter).
    start_utc: when the file's first sample was recorded (timezone-aware); chunk k's wall_utc is
        start_utc + start_s. None: the time the iteration starts.
    realtime: True paces the chunks like a live source (each one is released once its last sample
        would have been captured), for rehearsing a monitor on recordings.

    The concatenated chunks equal ``load_audio(path, sample_rate, silence_peak_dbfs=None)``.
    Raises, naming the file: AudioDecodeError / EmptyAudioError (at construction for a missing,
    non-regular or empty file; during iteration for undecodable or sample-less content),
    NonFiniteAudioError, FFmpegMissingError.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        sample_rate: int,
        chunk_s: float = 1.0,
        start_utc: datetime | None = None,
        realtime: bool = False,
    ) -> None:
        super().__init__(sample_rate, chunk_s, start_utc)
        self.path = path
        self.label = os.fspath(path)
        self.realtime = bool(realtime)
        self._url = is_url(path)
        if self._url:
            if shutil.which("ffmpeg") is None:
                raise ffmpeg_missing(path)
        else:
            check_local_file(Path(path))

    def __repr__(self) -> str:
        return f"FileSource({self.label!r}, sample_rate={self.sample_rate})"

    def _events(self) -> Iterator[SourceEvent]:
        t0 = time.monotonic()
        assembler = _ChunkAssembler(self.sample_rate, self.chunk_samples)
        assembler.anchor(self.start_utc or _utc_now(), 0.0)
        resampler: _StreamResampler | None = None
        with contextlib.closing(self._decode()) as blocks:
            for block, rate_in in blocks:
                if self._closed.is_set():
                    return
                if resampler is None:
                    resampler = _StreamResampler(rate_in, self.sample_rate)
                for chunk in assembler.push(resampler.process(block)):
                    if not self._pace(chunk, t0):
                        return
                    yield chunk
        if self._closed.is_set():
            return
        if resampler is None:
            raise EmptyAudioError(f"{self.label}: no audio samples", self.path)
        last = assembler.push(resampler.finish())
        final = assembler.flush()
        for chunk in [*last, *([final] if final is not None else [])]:
            if not self._pace(chunk, t0):
                return
            yield chunk

    def _pace(self, chunk: Chunk, t0: float) -> bool:
        """In realtime mode waits until the chunk's last sample is due; False once closed."""
        if self.realtime:
            due = t0 + chunk.start_s + chunk.samples.shape[0] / self.sample_rate
            if self._closed.wait(max(0.0, due - time.monotonic())):
                return False
        return not self._closed.is_set()

    def _decode(self) -> Generator[tuple[np.ndarray, int], None, None]:
        """(float32 [n] mono block, the file's rate) until the end of the file."""
        if not self._url and Path(self.label).suffix.lower() in SOUNDFILE_EXTENSIONS:
            try:
                handle = soundfile.SoundFile(self.label)
            except soundfile.LibsndfileError as exc:
                if shutil.which("ffmpeg") is None:
                    raise AudioDecodeError(
                        f"{self.label}: cannot decode with libsndfile: {exc}", self.path, str(exc)
                    ) from None
                logger.debug("libsndfile cannot read %s (%s); trying ffmpeg", self.label, exc)
            else:
                with handle:
                    yield from self._decode_soundfile(handle)
                return
        yield from self._decode_ffmpeg()

    def _decode_soundfile(self, handle: soundfile.SoundFile) -> Iterator[tuple[np.ndarray, int]]:
        rate = int(handle.samplerate)
        done = 0
        while not self._closed.is_set():
            try:
                frames = handle.read(_FILE_BLOCK_FRAMES, dtype="float32", always_2d=True)
            except (soundfile.LibsndfileError, RuntimeError) as exc:
                raise AudioDecodeError(
                    f"{self.label}: read error after {done / rate:.3f} s: {exc}", self.path, str(exc)
                ) from None
            if frames.shape[0] == 0:
                return
            yield _mono_block(frames, self.label, self.path, done, rate), rate
            done += frames.shape[0]

    def _decode_ffmpeg(self) -> Iterator[tuple[np.ndarray, int]]:
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            raise ffmpeg_missing(self.path)
        process = self._spawn(ffmpeg_decode_command(ffmpeg, self.path), self.label)
        if process is None:
            return
        parser = _WavStreamParser()
        done = 0
        ended = False
        try:
            while True:
                try:
                    data = process.read(FFMPEG_TIMEOUT_S)
                except TimeoutError:
                    raise AudioDecodeError(
                        f"{self.label}: ffmpeg produced no output for {FFMPEG_TIMEOUT_S:g} s",
                        self.path,
                        "timed out",
                    ) from None
                if not data or self._closed.is_set():
                    ended = not data
                    break
                try:
                    frames = parser.feed(data)
                except ValueError as exc:
                    raise AudioDecodeError(
                        f"{self.label}: unexpected ffmpeg output ({exc})", self.path, str(exc)
                    ) from None
                if frames.shape[0]:
                    yield _mono_block(frames, self.label, self.path, done, parser.rate), parser.rate
                    done += frames.shape[0]
        finally:  # a finished ffmpeg may exit by itself; an abandoned one is killed at once
            status = process.close(grace_s=_EXIT_GRACE_S if ended else 0.0)
        if self._closed.is_set():
            return
        if status != 0:
            message = process.stderr_text() or f"exit status {status}"
            raise AudioDecodeError(f"{self.label}: ffmpeg cannot decode it: {message}", self.path, message)
        if not parser.started:
            raise AudioDecodeError(
                f"{self.label}: unexpected ffmpeg output (not a RIFF/WAVE stream)", self.path
            )


class PCMSource(AudioSource):
    """Raw interleaved PCM from a binary stream (``sys.stdin.buffer``, a socket file, a pipe).

    stream: read until EOF; not closed by the source (it belongs to the caller). ``close()`` from
        another thread takes effect once the pending read returns.
    sample_rate_in: the stream's rate in Hz. channels: interleaved channels (1..MAX_CHANNELS), mixed by mean.
    dtype: "s16le", "s32le" or "f32le" (integers scaled by their full range).
    sample_rate: output rate in Hz. chunk_s: seconds per Chunk.
    start_utc: when the stream's first sample was captured (timezone-aware). None: the time the
        first bytes arrived, less the duration of that first read (a live feed's capture time).

    A partial frame at EOF is dropped with a warning; NaN/Inf in f32le raise NonFiniteAudioError.
    """

    def __init__(
        self,
        stream: BinaryIO,
        sample_rate_in: int,
        channels: int = 1,
        dtype: str = "s16le",
        *,
        sample_rate: int,
        chunk_s: float = 1.0,
        start_utc: datetime | None = None,
    ) -> None:
        super().__init__(sample_rate, chunk_s, start_utc)
        self.stream = stream
        self.sample_rate_in = check_sample_rate(sample_rate_in, "sample_rate_in")
        if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be an integer in 1..{MAX_CHANNELS}, got {channels!r}")
        if dtype not in PCM_FORMATS:
            raise ValueError(f"dtype must be one of {sorted(PCM_FORMATS)}, got {dtype!r}")
        self.channels = channels
        self.dtype = dtype
        self._numpy_dtype = np.dtype(PCM_FORMATS[dtype])
        self.label = f"PCM stream {getattr(stream, 'name', type(stream).__name__)!s}"

    def __repr__(self) -> str:
        return f"PCMSource({self.label!r}, {self.sample_rate_in} Hz x {self.channels} {self.dtype})"

    def _events(self) -> Iterator[SourceEvent]:
        t0_utc = _utc_now()
        frame_bytes = self.channels * self._numpy_dtype.itemsize
        read_size = max(frame_bytes, _READ_BLOCK_BYTES - _READ_BLOCK_BYTES % frame_bytes)
        read = getattr(self.stream, "read1", None) or self.stream.read
        assembler = _ChunkAssembler(self.sample_rate, self.chunk_samples)
        if self.start_utc is not None:
            assembler.anchor(self.start_utc, 0.0)
        resampler = _StreamResampler(self.sample_rate_in, self.sample_rate)
        pending = b""
        done = 0
        while not self._closed.is_set():
            try:
                data = read(read_size)
            except (OSError, ValueError):
                if self._closed.is_set():
                    return
                raise
            if data is None:  # a non-blocking stream with nothing to read yet
                if self._closed.wait(_PCM_IDLE_POLL_S):
                    return
                continue
            if not data:
                break
            buf = pending + data if pending else data
            usable = len(buf) - len(buf) % frame_bytes
            pending = buf[usable:]
            if usable == 0:
                continue
            frames = np.frombuffer(buf, self._numpy_dtype, count=usable // self._numpy_dtype.itemsize)
            frames = frames.reshape(-1, self.channels)
            if not assembler.anchored:
                captured = _utc_now() - timedelta(seconds=frames.shape[0] / self.sample_rate_in)
                assembler.anchor(max(captured, t0_utc), 0.0)
            block = _mono_block(frames, self.label, None, done, self.sample_rate_in)
            done += frames.shape[0]
            yield from assembler.push(resampler.process(block))
        if self._closed.is_set():
            return
        if pending:
            logger.warning(
                "%s: dropping the final %d byte(s): not a whole frame (%d channel(s) x %d bytes)",
                self.label,
                len(pending),
                self.channels,
                self._numpy_dtype.itemsize,
            )
        if done == 0:
            return
        yield from assembler.push(resampler.finish())
        final = assembler.flush()
        if final is not None:
            yield final


class FFmpegSource(_FFmpegOwner):
    """A live stream (http/https/rtmp/rtsp/srt/udp URL, a device, a file) read by ffmpeg, restarted
    whenever it ends, fails or stalls.

    url: what ffmpeg's ``-i`` takes. sample_rate: output rate in Hz. chunk_s: seconds per Chunk.
    reconnect: restart ffmpeg when it exits (even normally: a live stream has no end) or stalls;
        False: a normal end ends the iteration, a failure raises StreamError.
    backoff_s: (first, cap): the k-th restart in a row waits min(first * 2**(k-1), cap) seconds.
    max_reconnects: restarts in a row that deliver no audio before StreamError is raised
        (None: never give up). A restart that delivers audio resets the count.
    read_timeout_s: no output for this long counts as a stall: ffmpeg is killed and restarted
        (ffmpeg's start-up probing must fit in it).
    ffmpeg: the ffmpeg executable (name on PATH or path). input_args: extra ffmpeg input options
        placed before ``-i`` (e.g. ``["-f", "pulse"]``, ``["-headers", "…"]``).

    Each outage becomes one Gap: from the last audio received to the first audio of the restarted
    stream, in wall-clock seconds. Chunk wall_utc: when the first audio of the current connection
    arrived, plus the chunk's offset from it.
    """

    def __init__(
        self,
        url: str,
        sample_rate: int,
        chunk_s: float = 1.0,
        reconnect: bool = True,
        backoff_s: tuple[float, float] = (1.0, 30.0),
        max_reconnects: int | None = None,
        read_timeout_s: float = 10.0,
        ffmpeg: str = "ffmpeg",
        input_args: Sequence[str] = (),
    ) -> None:
        super().__init__(sample_rate, chunk_s)
        self.url = os.fspath(url)
        self.reconnect = bool(reconnect)
        first, cap = (float(v) for v in backoff_s)
        if not (math.isfinite(first) and math.isfinite(cap) and 0 <= first <= cap):
            raise ValueError(f"backoff_s must be (first, cap) with 0 <= first <= cap, got {backoff_s!r}")
        self.backoff_s = (first, cap)
        if max_reconnects is not None and (isinstance(max_reconnects, bool) or max_reconnects < 0):
            raise ValueError(f"max_reconnects must be None or an integer >= 0, got {max_reconnects!r}")
        self.max_reconnects = max_reconnects
        if not (math.isfinite(read_timeout_s) and read_timeout_s > 0):
            raise ValueError(f"read_timeout_s must be a positive number of seconds, got {read_timeout_s!r}")
        self.read_timeout_s = float(read_timeout_s)
        executable = shutil.which(ffmpeg)
        if executable is None:
            raise ffmpeg_missing(self.url, "read streams")
        self.ffmpeg = executable
        self.input_args = list(input_args)

    def __repr__(self) -> str:
        return f"FFmpegSource({self.url!r}, sample_rate={self.sample_rate})"

    def _command(self) -> list[str]:
        return ffmpeg_decode_command(self.ffmpeg, self.url, input_args=self.input_args)

    def _events(self) -> Iterator[SourceEvent]:
        assembler = _ChunkAssembler(self.sample_rate, self.chunk_samples)
        failures = 0  # restarts in a row without audio
        outage_since: float | None = None  # monotonic time audio stopped (None: flowing)
        outage_reason = ""
        while True:
            started = time.monotonic()
            process = self._spawn(self._command(), self.url)
            if process is None:
                return
            parser = _WavStreamParser()
            resampler: _StreamResampler | None = None
            last_audio = started
            stalled = ended = False
            problem = ""
            try:
                while True:
                    try:
                        data = process.read(self.read_timeout_s)
                    except TimeoutError:
                        stalled = True
                        break
                    if not data or self._closed.is_set():
                        ended = not data
                        break
                    try:
                        frames = parser.feed(data)
                    except ValueError as exc:
                        problem = f"unexpected ffmpeg output ({exc})"
                        break
                    if frames.shape[0] == 0:
                        continue
                    last_audio = time.monotonic()
                    if resampler is None:  # the first audio of this connection
                        resampler = _StreamResampler(parser.rate, self.sample_rate)
                        failures = 0
                        if outage_since is not None:
                            lost = last_audio - outage_since
                            logger.info("%s: audio is back after %.1f s", self.url, lost)
                            yield assembler.gap(lost, outage_reason)
                            outage_since = None
                        assembler.anchor(_utc_now(), assembler.next_start_s)
                    block = self._to_mono(frames, parser.rate)
                    yield from assembler.push(resampler.process(block))
            finally:
                status = process.close(grace_s=_EXIT_GRACE_S if ended else 0.0)
            if self._closed.is_set():
                return
            if resampler is not None:
                yield from assembler.push(resampler.finish())
                final = assembler.flush()
                if final is not None:
                    yield final
            reason = self._describe_end(process, status, stalled, problem)
            if outage_since is None:
                outage_since = last_audio if resampler is not None else started
            outage_reason = reason
            if not self.reconnect:
                if status == 0 and not stalled and not problem:
                    return
                raise StreamError(f"{self.url}: {reason}", self.url)
            if self.max_reconnects is not None and failures >= self.max_reconnects:
                if failures == 0:
                    raise StreamError(f"{self.url}: {reason} (max_reconnects=0: no restart)", self.url)
                raise StreamError(
                    f"{self.url}: {failures} restart(s) in a row delivered no audio "
                    f"(max_reconnects={self.max_reconnects}); last: {reason}",
                    self.url,
                )
            delay = min(self.backoff_s[0] * 2.0**failures, self.backoff_s[1])
            failures += 1
            logger.warning(
                "%s: %s; restarting ffmpeg in %.1f s (attempt %d)", self.url, reason, delay, failures
            )
            if self._closed.wait(delay):
                return

    def _to_mono(self, frames: np.ndarray, rate: int) -> np.ndarray:
        """Mixes a block; non-finite samples (a broken packet) become zeros with a warning, so that
        one bad packet cannot stop a monitor."""
        finite = np.isfinite(frames)
        if not finite.all():
            logger.warning(
                "%s: %d NaN/Inf sample value(s) replaced by 0",
                self.url,
                frames.size - np.count_nonzero(finite),
            )
            frames = np.where(finite, frames, np.float32(0))
        return _mono_block(frames, self.url, None, 0, rate)

    def _describe_end(self, process: _FFmpegProcess, status: int | None, stalled: bool, problem: str) -> str:
        if stalled:
            return f"no audio for {self.read_timeout_s:g} s (stalled)"
        if problem:
            return problem
        stderr = process.stderr_text()
        if status == 0:
            return "the stream ended" + (f" ({stderr})" if stderr else "")
        return f"ffmpeg exited with status {status}" + (f": {stderr}" if stderr else "")
