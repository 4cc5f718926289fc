"""Optional Prometheus metrics for monitors (``prometheus_client``, imported only when asked for).

One :class:`MonitorMetrics` per process, shared by all its monitors (each series is labelled
with the channel); metric names are registered once per registry, so a second instance on the
same registry is refused by prometheus_client. Install with ``pip install prometheus-client``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["MonitorMetrics", "require_prometheus", "start_http_server"]


def require_prometheus() -> ModuleType:
    """The ``prometheus_client`` module, or an ImportError saying how to install it."""
    try:
        return importlib.import_module("prometheus_client")
    except ImportError as exc:
        raise ImportError(
            "Prometheus metrics need the prometheus_client package, which is not installed: "
            "pip install prometheus-client"
        ) from exc


class MonitorMetrics:
    """Gauges and counters of a monitoring process.

    Series (``namespace`` prefixed, ``channel`` label except on ``streams``):
        ``<ns>_monitor_streams``: streams being monitored now (gauge).
        ``<ns>_monitor_lag_seconds``: wall-clock now minus the UTC end of the latest window
            ranked (gauge; for live streams, how far behind real time the monitor runs).
        ``<ns>_monitor_detections_total``, ``<ns>_monitor_errors_total``,
        ``<ns>_monitor_gaps_total``: detections emitted, exceptions raised while processing,
            stream gaps (dropouts, discontinuities) reported.
        ``<ns>_monitor_windows_total``, ``<ns>_monitor_audio_seconds_total``: windows ranked
            and seconds of audio consumed (their rates are the throughput).

    Args:
        registry: a ``prometheus_client.CollectorRegistry``; None: the default global registry.
        namespace: prefix of every metric name.
    """

    def __init__(self, registry: Any = None, namespace: str = "csi") -> None:
        prom = require_prometheus()
        self.registry = prom.REGISTRY if registry is None else registry
        reg = {"registry": self.registry}
        ns = f"{namespace}_monitor"
        self.streams = prom.Gauge(f"{ns}_streams", "Streams being monitored", **reg)
        self.lag_s = prom.Gauge(
            f"{ns}_lag_seconds", "Wall-clock now minus the UTC end of the latest window", ["channel"], **reg
        )
        self.detections_total = prom.Counter(f"{ns}_detections", "Detections emitted", ["channel"], **reg)
        self.errors_total = prom.Counter(f"{ns}_errors", "Errors raised while monitoring", ["channel"], **reg)
        self.gaps_total = prom.Counter(f"{ns}_gaps", "Stream gaps reported", ["channel"], **reg)
        self.windows_total = prom.Counter(f"{ns}_windows", "Windows ranked", ["channel"], **reg)
        self.audio_seconds_total = prom.Counter(
            f"{ns}_audio_seconds", "Seconds of audio consumed", ["channel"], **reg
        )

    def stream_started(self, channel: str) -> None:
        self.streams.inc()

    def stream_stopped(self, channel: str) -> None:
        self.streams.dec()

    def lag(self, channel: str, seconds: float) -> None:
        self.lag_s.labels(channel=channel).set(seconds)

    def detection(self, channel: str, n: int = 1) -> None:
        self.detections_total.labels(channel=channel).inc(n)

    def error(self, channel: str) -> None:
        self.errors_total.labels(channel=channel).inc()

    def gap(self, channel: str) -> None:
        self.gaps_total.labels(channel=channel).inc()

    def windows(self, channel: str, n: int) -> None:
        self.windows_total.labels(channel=channel).inc(n)

    def audio(self, channel: str, seconds: float) -> None:
        self.audio_seconds_total.labels(channel=channel).inc(seconds)


def start_http_server(port: int, addr: str = "0.0.0.0", registry: Any = None) -> Any:
    """Serves ``registry`` (default: the global one) at ``http://addr:port/metrics`` from a daemon
    thread; returns what ``prometheus_client.start_http_server`` returns (the server, in recent versions)."""
    prom = require_prometheus()
    return prom.start_http_server(port, addr=addr, registry=prom.REGISTRY if registry is None else registry)
