"""Monitoring output on disk: :class:`DetectionSink` appends detections and gaps to per-channel,
per-UTC-day JSON lines and CSV files (each line flushed and fsynced), :func:`read_jsonl` reads them
back, and :func:`plot_timeline` draws a channel's day as a PNG (matplotlib, imported when used).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any

from csi_runtime.atomic import atomic_write_bytes, fsync_dir
from csi_runtime.detections import CSV_FIELDS, Detection, GapRecord, parse_utc

__all__ = ["SECONDS_PER_HOUR", "DetectionSink", "plot_timeline", "read_jsonl"]

logger = logging.getLogger(__name__)

SECONDS_PER_HOUR = 3600.0


def _channel_slug(channel: str) -> str:
    """The channel as a file-name part: percent-encoded, so distinct channels get distinct files."""
    return urllib.parse.quote(channel, safe="-_.")


@dataclass
class _OpenFile:
    fh: IO[bytes]
    day: date


@dataclass
class DetectionSink:
    """Writes detections and gaps under ``out_dir`` as they happen, one file per channel and UTC day:

    - ``detections-<channel>-<YYYYMMDD>.jsonl``: one :meth:`Detection.to_json` per line;
    - ``detections-<channel>-<YYYYMMDD>.csv``: the same rows (:data:`CSV_FIELDS`, metadata as JSON);
    - ``gaps-<channel>-<YYYYMMDD>.jsonl``: one :class:`GapRecord` per line;
    - ``timeline-<channel>-<YYYYMMDD>.png`` (``plots=True``): :func:`plot_timeline` of the day,
      written when the channel's day rolls over and at :meth:`close`.

    A detection belongs to the day of its start. Each line is written, flushed and fsynced before
    ``write`` returns, so a monitor killed at any point loses no detection it had emitted; files are
    appended to, and a partial last line left by a crash is cut off when the file is reopened.
    Thread-safe: monitors of many channels may share one sink.
    """

    out_dir: str | os.PathLike[str]
    csv: bool = True
    plots: bool = False
    fsync: bool = True
    _files: dict[tuple[str, str], _OpenFile] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _touched: set[tuple[str, date]] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise NotADirectoryError(f"monitor output folder is a file: {self.out_dir}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.plots:
            _require_matplotlib()

    def path(self, kind: str, channel: str, day: date) -> Path:
        """``kind``: "detections.jsonl", "detections.csv", "gaps.jsonl" or "timeline.png"."""
        stem, ext = kind.split(".")
        return Path(self.out_dir) / f"{stem}-{_channel_slug(channel)}-{day:%Y%m%d}.{ext}"

    def write(self, detection: Detection) -> None:
        """Appends one detection (JSON line, CSV row); durable when this returns."""
        day, channel = detection.day, detection.channel
        with self._lock:
            finished = self._append("detections.jsonl", channel, day, (detection.to_json() + "\n").encode())
            if self.csv:
                self._append("detections.csv", channel, day, _csv_line(detection.csv_row()))
            self._touched.add((channel, day))
        self._plot_days(finished)

    def write_gap(self, gap: GapRecord) -> None:
        """Appends one gap to the gaps log; durable when this returns."""
        day, channel = gap.day, gap.channel
        with self._lock:
            finished = self._append("gaps.jsonl", channel, day, (gap.to_json() + "\n").encode())
            self._touched.add((channel, day))
        self._plot_days(finished)

    def plot(self, channel: str, day: date) -> Path:
        """Writes the timeline PNG of one channel and day from its files; returns its path."""
        detections = [Detection.from_dict(d) for d in read_jsonl(self.path("detections.jsonl", channel, day))]
        gaps = read_jsonl(self.path("gaps.jsonl", channel, day))
        out = self.path("timeline.png", channel, day)
        plot_timeline(detections, gaps, out, channel=channel, day=day)
        return out

    def close(self) -> None:
        """Closes the files (and writes the plots of the days written to, with ``plots=True``)."""
        with self._lock:
            for f in self._files.values():
                f.fh.close()
            self._files.clear()
            touched, self._touched = sorted(self._touched), set()
        if self.plots:
            for channel, day in touched:
                self.plot(channel, day)

    def __enter__(self) -> DetectionSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _append(self, kind: str, channel: str, day: date, line: bytes) -> list[tuple[str, date]]:
        """Writes one line; returns the (channel, day) pairs finished by a day change (to plot)."""
        key = (kind, channel)
        f = self._files.get(key)
        finished: list[tuple[str, date]] = []
        if f is not None and f.day != day:
            f.fh.close()
            del self._files[key]
            f = None
            finished = sorted(t for t in self._touched if t[0] == channel and t[1] != day)
            self._touched.difference_update(finished)
        if f is None:
            f = _OpenFile(self._open(self.path(kind, channel, day), kind), day)
            self._files[key] = f
        f.fh.write(line)
        f.fh.flush()
        if self.fsync:
            os.fsync(f.fh.fileno())
        return finished

    def _plot_days(self, days: list[tuple[str, date]]) -> None:
        """Plots days a rollover finished (outside the lock; a failed plot never loses records)."""
        if not self.plots:
            return
        for channel, day in days:
            try:
                self.plot(channel, day)
            except Exception:
                logger.exception("timeline plot of %s on %s failed", channel, day)

    def _open(self, path: Path, kind: str) -> IO[bytes]:
        created = not path.exists()
        fh = open(path, "a+b")  # noqa: SIM115 - kept open across writes
        try:
            size = fh.seek(0, os.SEEK_END)
            if size:
                _cut_partial_line(fh, path, size)
            if kind == "detections.csv":
                header = _csv_line(list(CSV_FIELDS))
                fh.seek(0)
                first = fh.readline()
                fh.seek(0, os.SEEK_END)
                if not first:
                    fh.write(header)
                elif first != header:
                    raise ValueError(f"{path} exists with other columns than {','.join(CSV_FIELDS)}")
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
        except BaseException:
            fh.close()
            raise
        if created and self.fsync:
            fsync_dir(path.parent)
        return fh


def _csv_line(row: list[Any]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue().encode()


def _cut_partial_line(fh: IO[bytes], path: Path, size: int) -> None:
    """Truncates a last line without its newline (a write cut short by a crash)."""
    tail = min(size, 1 << 16)
    fh.seek(size - tail)
    data = fh.read(tail)
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n")
    keep = size - tail + cut + 1 if cut >= 0 else (0 if tail == size else None)
    if keep is None:  # a line longer than 64 KiB without a newline: keep it, start a new line
        fh.write(b"\n")
        return
    logger.warning(
        "%s: dropping a partial last line (%d bytes) left by an interrupted write", path, size - keep
    )
    fh.truncate(keep)
    fh.seek(0, os.SEEK_END)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (missing file: none); unreadable lines are skipped with a warning."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    with open(p, "rb") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                logger.warning("%s:%d is not valid JSON; skipped", p, i)
                continue
            if isinstance(value, dict):
                out.append(value)
    return out


# ---------------------------------------------------------------------------------------------
# Plot


def _require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "timeline plots need matplotlib, which is not installed: pip install matplotlib"
        ) from exc
    return matplotlib


def _lanes(spans: list[tuple[float, float]]) -> list[int]:
    """Greedy interval colouring: each span gets the first lane free at its start."""
    lane_end: list[float] = []
    out = []
    for a, b in spans:
        for i, end in enumerate(lane_end):
            if end <= a:
                lane_end[i] = b
                out.append(i)
                break
        else:
            lane_end.append(b)
            out.append(len(lane_end) - 1)
    return out


def plot_timeline(
    detections: Sequence[Detection],
    gaps: Sequence[GapRecord | dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    channel: str,
    day: date,
    dpi: int = 100,
) -> Path:
    """PNG of one channel's day (00:00–24:00 UTC): each detection a bar labelled with its work id
    and coloured by score (overlapping detections on separate lanes), gaps shaded. Written
    atomically. Uses matplotlib's Agg canvas directly (no pyplot, no global backend change)."""
    _require_matplotlib()
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()

    def hours(iso: str) -> float:
        return (parse_utc(iso) - midnight) / SECONDS_PER_HOUR

    rows = sorted(detections, key=lambda d: (d.start_utc, d.end_utc))
    spans = [(hours(d.start_utc), hours(d.end_utc)) for d in rows]
    lanes = _lanes(spans)
    n_lanes = max(lanes, default=0) + 1
    scores = [d.score for d in rows] or [0.0, 1.0]
    lo, hi = min(scores), max(scores)
    norm = Normalize(vmin=lo, vmax=max(hi, lo + 1e-6))
    fig = Figure(figsize=(24, 1.6 + 0.9 * n_lanes))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    viridis = colormaps["viridis"]
    for d, (a, b), lane in zip(rows, spans, lanes):
        ax.broken_barh([(a, max(b - a, 1e-3))], (lane + 0.1, 0.8), facecolors=viridis(norm(d.score)))
        mid = 0.5 * (a + b)
        ax.text(mid, lane + 0.5, str(d.work_id), ha="center", va="center", rotation=90, fontsize=6)
    for g in gaps:
        g0 = hours(g["start_utc"] if isinstance(g, dict) else g.start_utc)
        g1 = hours(g["end_utc"] if isinstance(g, dict) else g.end_utc)
        ax.axvspan(g0, max(g1, g0 + 1e-3), color="0.6", alpha=0.35, hatch="//", linewidth=0)
    ax.set_xlim(0, 24)
    ax.set_ylim(0, n_lanes)
    ax.set_yticks([])
    ax.set_xticks(range(25))
    ax.set_xticklabels([f"{h:02d}:00" for h in range(25)], fontsize=7)
    ax.set_xlabel("UTC")
    ax.set_title(f"{channel} — {day.isoformat()} — {len(rows)} detections, {len(gaps)} gaps")
    if rows:
        fig.colorbar(ScalarMappable(norm=norm, cmap=viridis), ax=ax, pad=0.01, fraction=0.02, label="score")
    if gaps:
        ax.legend(handles=[Patch(facecolor="0.6", alpha=0.35, hatch="//", label="gap")], loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out
