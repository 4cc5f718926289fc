"""Monitoring records and the stream clock: :class:`Detection` (one play of a work on a channel),
:class:`GapRecord` (a stretch without audio), UTC helpers (:func:`utc_iso`, :func:`parse_utc`) and
:class:`StreamClock` (stream seconds → UTC).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np

__all__ = ["CSV_FIELDS", "Detection", "GapRecord", "StreamClock", "parse_utc", "utc_iso"]


def utc_iso(epoch_s: float) -> str:
    """POSIX seconds → ISO 8601 UTC with milliseconds, e.g. ``2024-05-01T12:00:03.500Z``."""
    ms = round(epoch_s * 1000.0)
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def parse_utc(value: datetime | str | float | int) -> float:
    """A UTC instant as POSIX seconds: an aware datetime, an ISO 8601 string with an offset or ``Z``,
    or POSIX seconds. Naive datetimes and strings are refused (their zone would be a guess)."""
    if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"UTC time must be finite (got {value})")
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"UTC time must carry a time zone (got naive {value.isoformat()})")
        return value.timestamp()
    raise TypeError(
        f"UTC time must be a datetime, ISO 8601 string or POSIX seconds (got {type(value).__name__})"
    )


CSV_FIELDS = (
    "channel",
    "start_utc",
    "end_utc",
    "played_duration_s",
    "query_offset_s",
    "work_id",
    "score",
    "peak_score",
    "n_windows",
    "model_id",
    "metadata",
)


@dataclass(frozen=True)
class Detection:
    """One play of a known work on a channel, as broadcast-monitoring reports carry it.

    Attributes:
        channel: the stream's name.
        start_utc, end_utc: ISO 8601 UTC with milliseconds (``...Z``).
        played_duration_s: end minus start, seconds.
        query_offset_s: stream seconds (since the monitor's stream origin) of the start.
        work_id: the work played; metadata: the catalog's metadata of the best-matching
            reference vector (e.g. the recording, title, artist).
        score: smoothed score (mean of the supporting windows); peak_score: the best window's.
        model_id: the embedding model; n_windows: supporting windows.
    """

    channel: str
    start_utc: str
    end_utc: str
    played_duration_s: float
    query_offset_s: float
    work_id: str | int
    score: float
    peak_score: float
    metadata: dict[str, Any]
    model_id: str | None
    n_windows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """One line of JSON (no newline)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False, separators=(",", ":"))

    def csv_row(self) -> list[Any]:
        d = self.to_dict()
        d["metadata"] = json.dumps(self.metadata, ensure_ascii=False, separators=(",", ":"))
        return [d[k] for k in CSV_FIELDS]

    @property
    def day(self) -> date:
        """UTC day of the start (the day whose files hold this detection)."""
        return datetime.fromisoformat(self.start_utc.replace("Z", "+00:00")).date()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Detection:
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__})
        except KeyError as exc:
            raise ValueError(f"detection record lacks field {exc}") from None


@dataclass(frozen=True)
class GapRecord:
    """A stretch of a stream with no audio (dropout, reconnect, discontinuity)."""

    channel: str
    start_utc: str
    end_utc: str
    duration_s: float
    stream_offset_s: float
    reason: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, allow_nan=False, separators=(",", ":"))

    @property
    def day(self) -> date:
        return datetime.fromisoformat(self.start_utc.replace("Z", "+00:00")).date()


# ---------------------------------------------------------------------------------------------
# Stream clock


class StreamClock:
    """Maps stream seconds to UTC (POSIX seconds): ``utc(t) = t + offset``, the offset piecewise
    constant (it changes where wall-clock stamps re-anchor the stream or after a gap)."""

    def __init__(self, origin_utc: float) -> None:
        self._points: list[tuple[float, float]] = [(-math.inf, float(origin_utc))]  # (from t, offset)

    def offset_at(self, t: float) -> float:
        offset = self._points[0][1]
        for since, off in self._points:
            if since > t:
                break
            offset = off
        return offset

    def utc(self, t: float) -> float:
        return t + self.offset_at(t)

    def set_from(self, t: float, offset: float) -> None:
        """From stream second ``t`` on, ``utc(t) = t + offset``."""
        self._points = [p for p in self._points if p[0] < t] + [(t, float(offset))]

    def reset(self, t: float, utc: float) -> None:
        """Forget the past (the stream's clock went backwards): one offset from here on."""
        self._points = [(-math.inf, float(utc) - t)]

    def prune(self, before: float) -> None:
        """Drop offsets that no stream second >= ``before`` uses (bounds memory)."""
        keep = 0
        for i, (since, _) in enumerate(self._points):
            if since <= before:
                keep = i
        self._points = self._points[keep:]
