"""csi_runtime.sources: files, raw PCM and live URLs as Chunk / Gap events, checked against load_audio
and direct soxr calls; dropouts and stalls on a local HTTP server; no ffmpeg left running."""

from __future__ import annotations

import gc
import io
import logging
import os
import shutil
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile

from csi_runtime.audio import (
    AudioDecodeError,
    EmptyAudioError,
    FFmpegMissingError,
    InvalidAudioError,
    NonFiniteAudioError,
    load_audio,
    prepare_waveform,
    resampled_length,
)
from csi_runtime.sources import Chunk, FFmpegSource, FileSource, Gap, PCMSource, SourceEvent, StreamError

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")

RATE = 16000


def chunks_of(events: list[SourceEvent]) -> list[Chunk]:
    return [e for e in events if isinstance(e, Chunk)]


def joined(events: list[SourceEvent]) -> np.ndarray:
    parts = [c.samples for c in chunks_of(events)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def check_chunk_timeline(chunks: list[Chunk], chunk_samples: int, rate: int, start_s: float = 0.0) -> None:
    """Full chunks except the last; contiguous positions; wall time advancing with the position."""
    position = start_s
    for i, chunk in enumerate(chunks):
        assert chunk.samples.dtype == np.float32 and chunk.samples.ndim == 1
        if i < len(chunks) - 1:
            assert chunk.samples.shape == (chunk_samples,)
        assert 0 < chunk.samples.shape[0] <= chunk_samples
        assert chunk.start_s == pytest.approx(position, abs=1e-9)
        assert chunk.wall_utc.tzinfo is not None and chunk.wall_utc.utcoffset() == timedelta(0)
        wall_step = (chunk.wall_utc - chunks[0].wall_utc).total_seconds()
        assert wall_step == pytest.approx(chunk.start_s - chunks[0].start_s, abs=1e-5)
        position += chunk.samples.shape[0] / rate


def write_stereo(tmp_path: Path, name: str, rng: np.random.Generator, seconds: float, rate: int) -> Path:
    x = rng.uniform(-0.5, 0.5, (round(seconds * rate), 2))
    path = tmp_path / name
    soundfile.write(path, x, rate, subtype="PCM_16")
    return path


def ffmpeg_encode(src: Path, dst: Path, *args: str) -> Path:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), *args, str(dst)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return dst


# ---------------------------------------------------------------------------------------------
# FileSource


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_file_source_equals_load_audio(tmp_path: Path, rng: np.random.Generator, fmt: str) -> None:
    path = write_stereo(tmp_path, f"song.{fmt}", rng, float(rng.uniform(2.0, 6.0)), 44100)
    chunk_s = float(rng.choice([0.25, 0.5, 1.0, 1.7]))
    start = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    with FileSource(path, RATE, chunk_s=chunk_s, start_utc=start) as source:
        events = list(source)
    assert all(isinstance(e, Chunk) for e in events)
    chunks = chunks_of(events)
    check_chunk_timeline(chunks, round(chunk_s * RATE), RATE)
    for chunk in chunks:  # wall_utc = start_utc + start_s, in UTC
        assert chunk.wall_utc == start.astimezone(UTC) + timedelta(seconds=chunk.start_s)
    reference = load_audio(path, RATE, silence_peak_dbfs=None)
    np.testing.assert_array_equal(joined(events), reference)


def test_file_source_without_resampling_and_mono(tmp_path: Path, rng: np.random.Generator) -> None:
    x = rng.uniform(-0.5, 0.5, int(rng.integers(RATE, 3 * RATE))).astype(np.float32)
    path = tmp_path / "mono.wav"
    soundfile.write(path, x, RATE, subtype="FLOAT")
    before = datetime.now(UTC)
    events = list(FileSource(path, RATE, chunk_s=0.3))
    after = datetime.now(UTC)
    np.testing.assert_array_equal(joined(events), x)
    assert before <= chunks_of(events)[0].wall_utc <= after  # no start_utc: the time iteration began
    check_chunk_timeline(chunks_of(events), round(0.3 * RATE), RATE)


@needs_ffmpeg
@pytest.mark.parametrize("channels", [1, 2])
def test_file_source_mp3(tmp_path: Path, rng: np.random.Generator, channels: int) -> None:
    rate, seconds = 44100, 3
    freq = float(rng.uniform(200, 2000))
    t = np.arange(rate * seconds) / rate
    x = np.stack([0.4 * np.sin(2 * np.pi * freq * t + 0.2 * c) for c in range(channels)], axis=1)
    wav = tmp_path / "src.wav"
    soundfile.write(wav, x, rate, subtype="PCM_16")
    mp3 = ffmpeg_encode(wav, tmp_path / "song.mp3", "-b:a", "192k")
    with FileSource(mp3, RATE, chunk_s=0.5) as source:
        events = list(source)
        process = source.process
    assert process is not None and process.poll() == 0
    y = joined(events)
    check_chunk_timeline(chunks_of(events), RATE // 2, RATE)
    # The same decoder, mixdown and resampler as load_audio: the same samples.
    np.testing.assert_array_equal(y, load_audio(mp3, RATE))
    # Against the source: ffmpeg trims LAME's delay and padding, so the signal lines up (one sample
    # of lag would drop the correlation to cos(2π f / 16 kHz) < 0.71); LAME changes the level by a
    # few percent.
    original = load_audio(wav, RATE)
    assert abs(len(y) - len(original)) <= 1
    n = min(len(y), len(original))
    edge = RATE // 20
    a, b = y[edge : n - edge].astype(np.float64), original[edge : n - edge].astype(np.float64)
    assert np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)) > 0.999
    assert 0.9 < np.sqrt(np.dot(a, a) / np.dot(b, b)) < 1.05


def test_file_source_streams_three_hours_in_bounded_memory(tmp_path: Path, rng: np.random.Generator) -> None:
    rate, hours = 8000, 3
    n = hours * 3600 * rate
    path = tmp_path / "three_hours.flac"
    marks = {}
    with soundfile.SoundFile(path, "w", rate, 1, subtype="PCM_16", format="FLAC") as fh:
        block = 600 * rate
        for i in range(0, n, block):
            noise = rng.integers(-3, 4, min(block, n - i)).astype(np.int16)  # ±3 LSB: "silent-ish"
            marks[i] = noise[:64].copy()
            fh.write(noise)
    decoded_bytes = resampled_length(n, rate, RATE) * 4
    count = 0
    tracemalloc.start()
    try:
        with FileSource(path, RATE, chunk_s=1.0) as source:
            for event in source:
                assert isinstance(event, Chunk)
                count += event.samples.shape[0]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == resampled_length(n, rate, RATE)
    assert peak < decoded_bytes / 50, f"peak {peak / 1e6:.1f} MB while streaming {decoded_bytes / 1e6:.0f} MB"


def test_file_source_realtime_pacing(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "short.wav"
    soundfile.write(path, rng.uniform(-0.5, 0.5, int(0.6 * RATE)), RATE)
    t0 = time.monotonic()
    released = []
    for event in FileSource(path, RATE, chunk_s=0.2, realtime=True):
        assert isinstance(event, Chunk)
        released.append((time.monotonic() - t0, event.start_s + event.samples.shape[0] / RATE))
    assert len(released) == 3
    for at, due in released:  # never before its last sample would have been captured
        assert at >= due - 0.01


def test_file_source_errors(tmp_path: Path, rng: np.random.Generator) -> None:
    with pytest.raises(AudioDecodeError, match=r"nope\.wav: no such file"):
        FileSource(tmp_path / "nope.wav", RATE)
    with pytest.raises(AudioDecodeError, match="not a regular file"):
        FileSource(tmp_path, RATE)
    empty = tmp_path / "empty.flac"
    empty.touch()
    with pytest.raises(EmptyAudioError, match=r"empty\.flac: the file is empty \(0 bytes\)"):
        FileSource(empty, RATE)
    header_only = tmp_path / "header_only.wav"
    soundfile.write(header_only, np.zeros(0), RATE)
    with pytest.raises(EmptyAudioError, match=r"header_only\.wav: no audio samples"):
        list(FileSource(header_only, RATE))
    x = rng.uniform(-0.5, 0.5, 100_000)
    where = int(rng.integers(70_000, 100_000))  # in the second soundfile block
    x[where] = np.nan
    nan = tmp_path / "nan.wav"
    soundfile.write(nan, x, RATE, subtype="FLOAT")
    events: list[SourceEvent] = []
    with pytest.raises(NonFiniteAudioError, match=rf"nan\.wav: 1 NaN/Inf .* at sample {where} "):
        events.extend(FileSource(nan, RATE))
    assert joined(events).shape[0] > 0  # what came before was delivered
    for bad in (0.0, -1.0, float("nan"), 1e-6):
        with pytest.raises(ValueError, match="chunk_s"):
            FileSource(nan, RATE, chunk_s=bad)
    with pytest.raises(ValueError, match="timezone-aware"):
        FileSource(nan, RATE, start_utc=datetime(2024, 1, 1))
    with pytest.raises(InvalidAudioError, match="sample_rate"):
        FileSource(nan, 44100.0)  # type: ignore[arg-type]


@needs_ffmpeg
def test_file_source_undecodable(tmp_path: Path, rng: np.random.Generator) -> None:
    junk = tmp_path / "junk.wav"  # libsndfile refuses it, then ffmpeg does
    junk.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    source = FileSource(junk, RATE)
    with pytest.raises(AudioDecodeError, match=r"junk\.wav: ffmpeg cannot decode it") as info:
        list(source)
    assert info.value.decoder_message
    assert source.process is not None and source.process.poll() is not None


@needs_ffmpeg
def test_file_source_close_mid_stream_reaps_ffmpeg(tmp_path: Path, rng: np.random.Generator) -> None:
    wav = write_stereo(tmp_path, "src.wav", rng, 20.0, 44100)
    mka = ffmpeg_encode(wav, tmp_path / "long.mka", "-c:a", "pcm_s16le")
    source = FileSource(mka, RATE, chunk_s=0.5)
    iterator = iter(source)
    first = next(iterator)
    assert isinstance(first, Chunk)
    process = source.process
    assert process is not None
    source.close()
    assert process.poll() is not None  # killed and reaped, not a zombie
    assert list(iterator) == []
    with pytest.raises(ValueError, match="closed"):
        iter(source)


def test_sources_iterate_once(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    soundfile.write(path, np.full(1000, 0.1), RATE)
    source = FileSource(path, RATE)
    assert len(list(source)) == 1
    with pytest.raises(RuntimeError, match="only once"):
        iter(source)


# ---------------------------------------------------------------------------------------------
# PCMSource


class Trickle(io.RawIOBase):
    """A raw stream returning the bytes in random small pieces (frames split across reads)."""

    def __init__(self, data: bytes, rng: np.random.Generator) -> None:
        self._data, self._pos, self._rng = data, 0, rng

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), int(self._rng.integers(1, 5000)), len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


@pytest.mark.parametrize(("dtype", "numpy_dtype"), [("s16le", "<i2"), ("s32le", "<i4"), ("f32le", "<f4")])
def test_pcm_source_formats_and_channels(
    rng: np.random.Generator, dtype: str, numpy_dtype: str, caplog: pytest.LogCaptureFixture
) -> None:
    rate_in = int(rng.choice([8000, 22050, 44100, 48000]))
    channels = int(rng.integers(1, 4))
    n = int(rng.integers(1, 3 * rate_in))
    if numpy_dtype == "<f4":
        frames = rng.uniform(-1, 1, (n, channels)).astype(numpy_dtype)
    else:
        info = np.iinfo(np.dtype(numpy_dtype))
        frames = rng.integers(info.min, info.max, (n, channels), endpoint=True).astype(numpy_dtype)
    partial = int(rng.integers(1, channels * np.dtype(numpy_dtype).itemsize))
    data = frames.tobytes() + b"\x7f" * partial
    start = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    with caplog.at_level(logging.WARNING, logger="csi_runtime.sources"):
        source = PCMSource(Trickle(data, rng), rate_in, channels, dtype, sample_rate=RATE, start_utc=start)
        events = list(source)
    expected = prepare_waveform(frames, rate_in, RATE)
    np.testing.assert_allclose(joined(events), expected, rtol=0, atol=1e-7)
    chunks = chunks_of(events)
    check_chunk_timeline(chunks, RATE, RATE)
    assert chunks[0].wall_utc == start
    warnings = [r.getMessage() for r in caplog.records]
    assert any(f"dropping the final {partial} byte(s)" in w for w in warnings), warnings


def test_pcm_source_from_a_pipe(rng: np.random.Generator) -> None:
    rate_in, channels = 48000, 2
    frames = rng.integers(-32768, 32768, (rate_in * 2 + 123, channels)).astype("<i2")
    payload = frames.tobytes()
    read_fd, write_fd = os.pipe()

    def writer() -> None:
        with os.fdopen(write_fd, "wb") as out:
            pos = 0
            while pos < len(payload):
                step = int(rng.integers(1, 20000))
                out.write(payload[pos : pos + step])
                out.flush()
                pos += step

    thread = threading.Thread(target=writer)
    thread.start()
    before = datetime.now(UTC)
    with os.fdopen(read_fd, "rb") as stream:
        events = list(PCMSource(stream, rate_in, channels, "s16le", sample_rate=RATE, chunk_s=0.5))
    after = datetime.now(UTC)
    thread.join()
    np.testing.assert_allclose(joined(events), prepare_waveform(frames, rate_in, RATE), atol=1e-7)
    chunks = chunks_of(events)
    check_chunk_timeline(chunks, RATE // 2, RATE)
    assert before <= chunks[0].wall_utc <= after


def test_pcm_source_edge_cases(rng: np.random.Generator) -> None:
    assert list(PCMSource(io.BytesIO(b""), 16000, sample_rate=RATE)) == []
    assert list(PCMSource(io.BytesIO(b"\x01"), 16000, sample_rate=RATE)) == []  # one partial frame
    x = rng.uniform(-0.5, 0.5, 40000).astype("<f4")
    where = int(rng.integers(1000, 40000))
    x[where] = np.inf
    with pytest.raises(NonFiniteAudioError, match=rf"PCM stream .*: 1 NaN/Inf .* at sample {where} "):
        list(PCMSource(io.BytesIO(x.tobytes()), 8000, 1, "f32le", sample_rate=RATE))
    with pytest.raises(ValueError, match=r"channels must be an integer in 1\.\.64"):
        PCMSource(io.BytesIO(b""), 16000, 0, sample_rate=RATE)
    with pytest.raises(ValueError, match="dtype must be one of"):
        PCMSource(io.BytesIO(b""), 16000, 1, "s24le", sample_rate=RATE)
    with pytest.raises(InvalidAudioError, match="sample_rate_in 500 Hz is outside"):
        PCMSource(io.BytesIO(b""), 500, sample_rate=RATE)


def test_pcm_source_close_from_another_thread() -> None:
    read_fd, write_fd = os.pipe()
    silence = bytes(2 * 1600)  # 0.1 s at 16 kHz s16le
    with os.fdopen(read_fd, "rb") as stream, os.fdopen(write_fd, "wb") as out:
        source = PCMSource(stream, 16000, sample_rate=RATE, chunk_s=0.1)
        got: list[SourceEvent] = []

        def consume() -> None:
            got.extend(source)

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        for _ in range(5):
            out.write(silence)
            out.flush()
            time.sleep(0.02)
        source.close()
        out.write(silence)  # the pending read returns, and the iteration sees the close
        out.flush()
        thread.join(10)
        assert not thread.is_alive()
    assert source.closed and all(isinstance(e, Chunk) for e in got)


# ---------------------------------------------------------------------------------------------
# FFmpegSource against a local HTTP server


class AudioServer:
    """Serves one WAV file; request k follows plan[k] (the last entry repeats): "full", "404",
    "cut:N" (N bytes, then the connection closes) or "stall:N" (N bytes, then silence, open)."""

    def __init__(self, payload: bytes, plan: list[str]) -> None:
        self.payload = payload
        self.plan = plan
        self.requests = 0
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                step = server.plan[min(server.requests, len(server.plan) - 1)]
                server.requests += 1
                if step == "404":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.send_header("Content-Length", str(len(server.payload)))
                self.end_headers()
                if step == "full":
                    self.wfile.write(server.payload)
                    return
                kind, count = step.split(":")
                self.wfile.write(server.payload[: int(count)])
                self.wfile.flush()
                if kind == "stall":
                    server.release.wait(30)
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.wav"

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stereo_wav(tmp_path: Path, rng: np.random.Generator) -> Path:
    return write_stereo(tmp_path, "stream.wav", rng, float(rng.uniform(2.0, 3.0)), 44100)


@pytest.fixture
def serve(stereo_wav: Path) -> Iterator[object]:
    servers: list[AudioServer] = []

    def start(plan: list[str], path: Path = stereo_wav) -> AudioServer:
        servers.append(AudioServer(path.read_bytes(), plan))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@needs_ffmpeg
def test_url_through_load_audio_and_ffmpeg_source(serve: object, stereo_wav: Path) -> None:
    server = serve(["full"])  # type: ignore[operator]
    reference = load_audio(stereo_wav, RATE)
    np.testing.assert_array_equal(load_audio(server.url, RATE), reference)
    source = FFmpegSource(server.url, RATE, chunk_s=0.5, reconnect=False)
    with source:
        events = list(source)
    assert all(isinstance(e, Chunk) for e in events)
    np.testing.assert_array_equal(joined(events), reference)
    check_chunk_timeline(chunks_of(events), RATE // 2, RATE)
    assert source.process is not None and source.process.poll() == 0


@needs_ffmpeg
def test_dropout_becomes_a_gap_and_the_stream_goes_on(
    serve: object, stereo_wav: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cut_bytes = 44 + 4 * 44100  # the header and one second of 44.1 kHz stereo s16
    server = serve([f"cut:{cut_bytes}", "full", "404"])  # type: ignore[operator]
    reference = load_audio(stereo_wav, RATE)
    source = FFmpegSource(server.url, RATE, chunk_s=0.25, backoff_s=(0.05, 0.1), max_reconnects=1)
    events: list[SourceEvent] = []
    with (
        caplog.at_level(logging.WARNING, logger="csi_runtime.sources"),
        source,
        pytest.raises(StreamError, match=r"1 restart.* delivered no audio .*404"),
    ):
        events.extend(source)
    gaps = [i for i, e in enumerate(events) if isinstance(e, Gap)]
    assert len(gaps) == 1, events
    before, gap, after = events[: gaps[0]], events[gaps[0]], events[gaps[0] + 1 :]
    assert isinstance(gap, Gap)
    # Before: the first second, as far as it arrived (the resampler's tail is cut where the audio stopped).
    first = joined(before)
    assert 0.8 * RATE <= len(first) <= 1.01 * RATE
    edge = RATE // 50
    np.testing.assert_allclose(first[:-edge], reference[: len(first) - edge], atol=1e-6)
    check_chunk_timeline(chunks_of(before), RATE // 4, RATE)
    # The gap starts where that audio ends and lasts at least the back-off; then the whole file.
    assert gap.start_s == pytest.approx(len(first) / RATE)
    assert gap.duration_s >= 0.05 and gap.reason
    np.testing.assert_array_equal(joined(after), reference)
    check_chunk_timeline(chunks_of(after), RATE // 4, RATE, start_s=gap.start_s + gap.duration_s)
    assert server.requests == 3
    assert source.process is not None and source.process.poll() is not None
    assert any("restarting ffmpeg" in r.getMessage() for r in caplog.records)


@needs_ffmpeg
def test_stall_is_detected_without_hanging(serve: object, tmp_path: Path, rng: np.random.Generator) -> None:
    # ffmpeg's start-up probing holds the first ~half megabyte back: stall after 3.5 s (617 kB).
    # The read timeout runs from ffmpeg's launch: at 1 s, a slow start on a loaded CI machine once
    # read as two stalls in a row (no audio from either the stalled or the full stream).
    wav = write_stereo(tmp_path, "long.wav", rng, 6.0, 44100)
    stall_bytes = 44 + 4 * 44100 * 7 // 2
    server = serve([f"stall:{stall_bytes}", "full"], wav)  # type: ignore[operator]
    reference = load_audio(wav, RATE)
    source = FFmpegSource(server.url, RATE, chunk_s=0.25, backoff_s=(0.0, 0.0), read_timeout_s=2.0)
    before: list[SourceEvent] = []
    after: list[SourceEvent] = []
    gap = None
    with source:
        for event in source:
            if isinstance(event, Gap):
                if gap is not None:
                    break  # the full stream ended and was restarted
                gap = event
                continue
            (after if gap is not None else before).append(event)
    assert gap is not None and "stalled" in gap.reason and gap.duration_s >= 2.0
    received = joined(before)
    assert RATE <= len(received) <= 3.5 * RATE + 1
    edge = RATE // 50
    np.testing.assert_allclose(received[:-edge], reference[: len(received) - edge], atol=1e-6)
    assert gap.start_s == pytest.approx(len(received) / RATE)
    np.testing.assert_array_equal(joined(after), reference)
    assert source.process is not None and source.process.poll() is not None


@needs_ffmpeg
def test_close_from_another_thread_and_garbage_collection(
    serve: object, tmp_path: Path, rng: np.random.Generator
) -> None:
    wav = write_stereo(tmp_path, "long.wav", rng, 6.0, 44100)
    server = serve([f"stall:{44 + 4 * 44100 * 7 // 2}"], wav)  # type: ignore[operator]
    source = FFmpegSource(server.url, RATE, chunk_s=0.1, read_timeout_s=60.0)
    got: list[SourceEvent] = []
    first_chunk = threading.Event()

    def consume() -> None:
        for event in source:
            got.append(event)
            first_chunk.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        assert first_chunk.wait(30)
        time.sleep(0.2)  # let the consumer block on the stalled stream
        process = source.process
        assert process is not None and process.poll() is None  # ffmpeg waits on the stalled server
        source.close()
        thread.join(10)
        assert not thread.is_alive()  # the blocked iteration woke up
        assert process.poll() is not None
    finally:
        source.close()

    # A source dropped mid-iteration: garbage collection kills and reaps its ffmpeg.
    source2 = FFmpegSource(server.url, RATE, chunk_s=0.1, read_timeout_s=60.0)
    iterator = iter(source2)
    try:
        assert isinstance(next(iterator), Chunk)
        process2 = source2.process
        assert process2 is not None and process2.poll() is None
    except BaseException:
        source2.close()
        raise
    del iterator, source2
    gc.collect()
    assert process2.poll() is not None


@needs_ffmpeg
def test_ffmpeg_source_failures(serve: object, tmp_path: Path, stereo_wav: Path) -> None:
    server = serve(["404"])  # type: ignore[operator]
    with pytest.raises(StreamError, match=r"stream\.wav: ffmpeg exited with status \d+: .*404"):
        list(FFmpegSource(server.url, RATE, reconnect=False))
    with pytest.raises(StreamError, match=r"max_reconnects=0: no restart"):
        list(FFmpegSource(server.url, RATE, max_reconnects=0))
    source = FFmpegSource(server.url, RATE, backoff_s=(0.01, 0.02), max_reconnects=2)
    with pytest.raises(StreamError, match="2 restart"):
        list(source)
    assert server.requests == 1 + 1 + 3
    # A stream that is down when the monitor starts: the wait is a Gap at position 0.
    late = serve(["404", "full", "404"])  # type: ignore[operator]
    events: list[SourceEvent] = []
    with pytest.raises(StreamError):
        events.extend(FFmpegSource(late.url, RATE, backoff_s=(0.05, 0.05), max_reconnects=1))
    assert isinstance(events[0], Gap) and events[0].start_s == 0.0 and events[0].duration_s >= 0.05
    assert "404" in events[0].reason
    np.testing.assert_array_equal(joined(events), load_audio(stereo_wav, RATE))
    assert [type(e) for e in events[1:]] == [Chunk] * (len(events) - 1)
    with pytest.raises(FFmpegMissingError, match=r"stream\.wav: ffmpeg is needed to read streams"):
        FFmpegSource(server.url, RATE, ffmpeg=str(tmp_path / "no-ffmpeg"))
    for bad in [(2.0, 1.0), (-1.0, 1.0), (0.0, float("inf"))]:
        with pytest.raises(ValueError, match="backoff_s"):
            FFmpegSource(server.url, RATE, backoff_s=bad)
    with pytest.raises(ValueError, match="read_timeout_s"):
        FFmpegSource(server.url, RATE, read_timeout_s=0.0)
    with pytest.raises(ValueError, match="max_reconnects"):
        FFmpegSource(server.url, RATE, max_reconnects=-1)
