"""A stand-in for the ``tensorrt`` module's runtime side (Runtime, ILogger), for tests that check
what csi does before and around deserialisation on machines without TensorRT."""

from __future__ import annotations

import types
from typing import Any


class FakeLogger:
    class Severity:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self) -> None:
        pass


def fake_tensorrt(version: str, deserialized: Any, calls: list[str]) -> Any:
    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger
            calls.append("Runtime")

        def deserialize_cuda_engine(self, data: bytes) -> Any:
            calls.append(f"deserialize {len(data)} bytes")
            if deserialized is None:
                self.logger.log(FakeLogger.Severity.ERROR, "Serialization assertion magicTagRead failed")
            return deserialized

    return types.SimpleNamespace(__version__=version, ILogger=FakeLogger, Runtime=Runtime)
