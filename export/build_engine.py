#!/usr/bin/env python3
"""Checkpoint → model bundle (ONNX) → TensorRT engine. Run with --help; also available as `csi export`."""

import sys

from csi_export.cli import main

if __name__ == "__main__":
    sys.exit(main())
