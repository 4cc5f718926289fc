"""``StreamingEmbedder``: a live stream, pushed in chunks of any size → window embeddings as soon as
each window is complete.

Frames are computed once. The stream is framed exactly like a whole file (frame t centred on sample
t * hop, silence before the stream's first sample): a frontend call turns the buffered audio — the
new samples plus the ``context_samples`` each side that the frames need — into every frame it can
complete, and those frames serve all the overlapping windows that contain them. The frontend runs
only when a window is due (once per hop), so the context overhead is paid once per hop, not per
chunk; the encoder runs once per window, windows due together share a call.

Memory is bounded by one window of frames plus one hop of audio, whatever the stream's length.
``state()`` / ``save_state()`` capture everything needed to continue after a restart
(``StreamingEmbedder.restore``): the resumed stream emits the windows the uninterrupted one would.

Segments equal those of ``Embedder.embed_segments`` over the same audio (same windows, same
frames), including the final end-aligned window that ``flush()`` emits at the end of a stream.
"""

from __future__ import annotations

import io
import json
import os
import threading
from typing import Any, NamedTuple

import numpy as np

from csi_runtime.atomic import atomic_write_bytes
from csi_runtime.embedder import Embedder, Segments, frame_peaks, window_starts

__all__ = ["STATE_FORMAT", "Segment", "StreamingEmbedder"]

STATE_FORMAT = "csi-stream-state-v1"


class Segment(NamedTuple):
    """One window of a stream: seconds since the stream's first sample, and its embedding float32 [D]
    (unit norm; all zeros when ``silent``)."""

    start_s: float
    end_s: float
    vector: np.ndarray
    silent: bool = False


class StreamingEmbedder:
    """Window embeddings of a stream pushed chunk by chunk.

    window_s / hop_s: window length and hop in seconds (default: the model's), rounded to whole
    frames (``1 / embedder.frame_rate`` s). Push float audio at ``embedder.sample_rate`` (any numeric
    dtype, mono [n] or [n, channels]); resample other rates before pushing (csi_runtime.sources does).
    """

    def __init__(self, embedder: Embedder, window_s: float | None = None, hop_s: float | None = None) -> None:
        self.embedder = embedder
        self.window = embedder.window_frames(window_s)
        self.hop = embedder.hop_frames(hop_s)
        self.window_s = self.window / embedder.frame_rate
        self.hop_s = self.hop / embedder.frame_rate
        manifest = embedder.bundle.manifest["frontend"]
        self._hop_length = int(manifest["params"].get("hop_length", embedder.hop_samples))
        self._ctx = embedder.context_samples
        self._H = embedder.hop_samples
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        n_features = int(self.embedder.bundle.manifest["frontend"]["n_features"])
        self._buf = np.zeros(self._ctx, np.float32)  # padded samples from padded index _buf_start
        self._buf_start = 0  # = frames computed so far × H
        self._frames = np.zeros((n_features, 0), np.float32)  # frames [_frames_start, _frames_start + m)
        self._peaks = np.zeros(0, np.float32)
        self._frames_start = 0
        self._next_window = 0
        self._pushed = 0
        self._flushed = False

    @property
    def position_s(self) -> float:
        """Seconds of audio pushed so far."""
        return self._pushed / self.embedder.sample_rate

    @property
    def frames_computed(self) -> int:
        return self._frames_start + self._frames.shape[1]

    # ------------------------------------------------------------------------------------- pushing

    def push(self, chunk: Any) -> list[Segment]:
        """Append audio; return the segments of every window completed by it (often none)."""
        from csi_runtime.audio import as_mono_float32

        samples = as_mono_float32(chunk, name="chunk") if np.size(chunk) else np.zeros(0, np.float32)
        with self._lock:
            if self._flushed:
                raise RuntimeError("this stream was flushed; create a new StreamingEmbedder to continue")
            self._buf = np.concatenate([self._buf, samples])
            self._pushed += len(samples)
            end = self._next_window * self.hop + self.window  # frames the next window needs
            if self._complete_frames() < end:
                return []
            self._compute_frames(final=False)
            return self._emit(final=False)

    def flush(self) -> list[Segment]:
        """End of stream: frame the tail as a file's end is framed and emit the remaining windows
        (including one aligned to the end when frames remain uncovered)."""
        with self._lock:
            if self._flushed:
                return []
            self._flushed = True
            self._buf = np.concatenate([self._buf, np.zeros(self._ctx, np.float32)])
            self._compute_frames(final=True)
            return self._emit(final=True)

    def _complete_frames(self) -> int:
        """Frames computable now without the end-of-stream padding (counted from frame 0)."""
        return self.frames_computed + max(0, (len(self._buf) - 2 * self._ctx) // self._H)

    def _compute_frames(self, final: bool) -> None:
        if final:
            # the whole remaining buffer, as the file path frames a padded file
            span = len(self._buf) - 2 * self._ctx
            k = (span // self._hop_length + 1) // (self._H // self._hop_length) if span >= 0 else 0
            audio = self._buf
        else:
            k = max(0, (len(self._buf) - 2 * self._ctx) // self._H)
            audio = self._buf[: k * self._H + 2 * self._ctx]
        if k <= 0:
            return
        min_valid = int(self.embedder.bundle.manifest["frontend"]["min_samples"])
        if len(audio) < min_valid:  # the graph needs ≥ 2 frames: zero-extend, keep only k
            audio = np.concatenate([audio, np.zeros(min_valid - len(audio), np.float32)])
        frames = self.embedder.frames_valid(audio)[:, :k]
        peaks = frame_peaks(self._buf, self._H, k, offset=-self._ctx)
        self._frames = np.concatenate([self._frames, frames], axis=1)
        self._peaks = np.concatenate([self._peaks, peaks])
        consumed = min(k * self._H, len(self._buf))
        self._buf = self._buf[consumed:]
        self._buf_start += k * self._H

    def _emit(self, final: bool) -> list[Segment]:
        total = self.frames_computed
        if final:
            starts = [s for s in window_starts(total, self.window, self.hop, self.embedder.min_frames)
                      if s >= self._next_window * self.hop or s + self.window > self._last_end()]  # fmt: skip
            starts = [s for s in starts if s >= self._frames_start]
        else:
            starts = []
            while (self._next_window * self.hop + self.window) <= total:
                starts.append(self._next_window * self.hop)
                self._next_window += 1
        segments: list[Segment] = []
        if starts:
            local = [s - self._frames_start for s in starts]
            batch: Segments = self.embedder.encode_windows(
                self._frames, self._peaks, local, self.window, offset_frames=self._frames_start
            )
            segments = [
                Segment(float(a), float(b), v, bool(q))
                for a, b, v, q in zip(batch.starts, batch.ends, batch.vectors, batch.silent, strict=True)
            ]
        self._trim()
        return segments

    def _last_end(self) -> int:
        """End frame of the last regular window emitted (0 if none)."""
        return (self._next_window - 1) * self.hop + self.window if self._next_window else 0

    def _trim(self) -> None:
        """Drop frames no future window needs: keep from the next window's start, and the last
        `window` frames (an end-aligned final window may reach back that far)."""
        keep_from = min(self._next_window * self.hop, max(0, self.frames_computed - self.window))
        drop = keep_from - self._frames_start
        if drop > 0:
            self._frames = self._frames[:, drop:]
            self._peaks = self._peaks[drop:]
            self._frames_start = keep_from

    # ------------------------------------------------------------------------------------- state

    def state(self) -> dict[str, Any]:
        """Everything needed to continue this stream (arrays and numbers)."""
        with self._lock:
            return {
                "format": STATE_FORMAT,
                "model_id": self.embedder.model_id,
                "window": self.window,
                "hop": self.hop,
                "buf": self._buf.copy(),
                "buf_start": self._buf_start,
                "frames": self._frames.copy(),
                "peaks": self._peaks.copy(),
                "frames_start": self._frames_start,
                "next_window": self._next_window,
                "pushed": self._pushed,
                "flushed": self._flushed,
            }

    def save_state(self, path: str | os.PathLike[str]) -> None:
        """Write state() atomically as an .npz (no pickle)."""
        s = self.state()
        meta = {k: v for k, v in s.items() if not isinstance(v, np.ndarray)}
        out = io.BytesIO()
        np.savez(out, meta=np.array(json.dumps(meta)), buf=s["buf"], frames=s["frames"], peaks=s["peaks"])
        atomic_write_bytes(path, out.getvalue())

    @classmethod
    def restore(cls, embedder: Embedder, state: dict[str, Any] | str | os.PathLike[str]) -> StreamingEmbedder:
        """A StreamingEmbedder continuing a saved stream; refuses another model or window/hop."""
        if not isinstance(state, dict):
            try:
                with np.load(state, allow_pickle=False) as z:
                    meta = json.loads(str(z["meta"]))
                    state = {**meta, "buf": z["buf"], "frames": z["frames"], "peaks": z["peaks"]}
            except (OSError, ValueError, KeyError) as exc:
                raise ValueError(f"{state} is not a readable stream state: {exc}") from exc
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a csi stream state (format {state.get('format')!r})")
        if state["model_id"] != embedder.model_id:
            raise ValueError(
                f"the stream state was made with model {state['model_id']}, "
                f"this embedder is {embedder.model_id}"
            )
        self = cls(
            embedder, window_s=state["window"] / embedder.frame_rate, hop_s=state["hop"] / embedder.frame_rate
        )
        if (self.window, self.hop) != (state["window"], state["hop"]):
            raise ValueError("the stream state's window/hop do not fit this model's frame rate")
        self._buf = np.asarray(state["buf"], np.float32)
        self._buf_start = int(state["buf_start"])
        self._frames = np.asarray(state["frames"], np.float32)
        self._peaks = np.asarray(state["peaks"], np.float32)
        self._frames_start = int(state["frames_start"])
        self._next_window = int(state["next_window"])
        self._pushed = int(state["pushed"])
        self._flushed = bool(state["flushed"])
        return self
