"""``python export/build_engine.py`` and ``csi export``: checkpoint → model bundle → TensorRT engine."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

DESCRIPTION = """\
Turn a training checkpoint into a model bundle that csi_runtime loads without torch, and
optionally build TensorRT engines for this machine's GPU.

A bundle is a folder: frontend.onnx (waveform → CQT/mel frames), encoder.onnx (frames →
unit-norm embedding), model.json (sample rate, frontend parameters, window and hop, embedding
size, provenance, sha256 of every file) and, if asked for, encoder.fp16.onnx, the onnxruntime-
optimised encoder.ort.onnx and TensorRT engines under engines/.
"""

EPILOG = """\
examples:
  # export, with the float16 encoder, and check parity with torch (prints a report)
  python export/build_engine.py --checkpoint runs/move_small/best --out bundles/move_small --fp16 --verify

  # re-check an existing bundle against its checkpoint
  python export/build_engine.py --bundle bundles/move_small --verify --checkpoint runs/move_small/best

  # build a TensorRT engine for this GPU (needs TensorRT 10+ and an NVIDIA GPU)
  python export/build_engine.py --bundle bundles/move_small --trt --precision fp16 --batch 1,8,32

An existing --out folder, or an engine already in the bundle, is replaced only with --force.
Exit status: 0 success, 1 parity check failed, 2 bad input or environment (message on stderr).
"""


def _triple(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three integers min,opt,max, got {text!r}") from None
    if len(values) != 3 or not (1 <= values[0] <= values[1] <= values[2]):
        raise argparse.ArgumentTypeError(f"expected min,opt,max with 1 ≤ min ≤ opt ≤ max, got {text!r}")
    return values[0], values[1], values[2]


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("what to export")
    src.add_argument(
        "--checkpoint",
        metavar="CKPT_DIR",
        help="training checkpoint folder (…/best or …/last of a csi train run)",
    )
    src.add_argument("--out", metavar="BUNDLE_DIR", help="bundle folder to write (with --checkpoint)")
    src.add_argument("--bundle", metavar="BUNDLE_DIR", help="an existing bundle (for --trt or --verify)")
    exp = p.add_argument_group("export options")
    exp.add_argument(
        "--fp16",
        action="store_true",
        help="also write encoder.fp16.onnx (float16 inside, float32 in/out); with --trt: fp16 engine",
    )
    exp.add_argument(
        "--ort-optimize",
        action="store_true",
        help="also save onnxruntime's offline-optimised encoder (encoder.ort.onnx)",
    )
    exp.add_argument(
        "--verify",
        action="store_true",
        help="compare onnxruntime with the torch model on random and rendered audio; print the report",
    )
    exp.add_argument("--force", action="store_true", help="replace an existing bundle folder or engine")
    exp.add_argument(
        "--window-s", type=float, help="encoder window for segments/streams, s (default: training crop)"
    )
    exp.add_argument("--hop-s", type=float, help="stream hop, s (default: half the window)")
    exp.add_argument("--seed", type=int, help="seed of the random parity audio (default: fresh)")
    trt = p.add_argument_group("TensorRT (optional; needs the tensorrt package and an NVIDIA GPU)")
    trt.add_argument(
        "--trt", action="store_true", help="build a TensorRT engine of the encoder into the bundle"
    )
    trt.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        help="engine precision (default: fp16 with --fp16, else fp32); fp16 uses encoder.fp16.onnx",
    )
    trt.add_argument(
        "--batch",
        type=_triple,
        default=(1, 8, 32),
        metavar="MIN,OPT,MAX",
        help="batch sizes of the optimisation profile (default 1,8,32)",
    )
    trt.add_argument(
        "--frames",
        type=_triple,
        metavar="MIN,OPT,MAX",
        help="encoder frames of the profile (default: model.json's min, window, max frames)",
    )
    trt.add_argument(
        "--workspace-mb", type=int, default=4096, help="builder workspace limit, MiB (default 4096)"
    )
    trt.add_argument(
        "--timing-cache", metavar="FILE", help="timing cache to load and update (default: in the bundle)"
    )
    trt.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    p.add_argument("--json", action="store_true", help="print the parity report as JSON instead of a table")


def _setup_logging(verbose: bool) -> None:
    from csi_runtime.cli import console_logging

    console_logging("csi_export", verbose)


def run(args: argparse.Namespace) -> int:
    """The command; returns the exit status (errors raise, the caller maps them to status 2)."""
    import numpy as np

    _setup_logging(getattr(args, "verbose", False))
    if args.checkpoint and args.bundle and not args.verify:
        raise ValueError("give --checkpoint with --out to export, or --bundle to work on an existing bundle")
    if not args.bundle and not (args.checkpoint and args.out):
        raise ValueError(
            "nothing to do: give --checkpoint CKPT_DIR --out BUNDLE_DIR, or --bundle BUNDLE_DIR "
            "with --trt and/or --verify (see --help)"
        )
    rng = np.random.default_rng(args.seed)
    status = 0
    if args.bundle is None:
        from csi_export.build import ParityFailedError, export_bundle

        try:
            result = export_bundle(
                args.checkpoint,
                args.out,
                fp16=args.fp16,
                ort_optimize=args.ort_optimize,
                verify=args.verify,
                force=args.force,
                window_s=args.window_s,
                hop_s=args.hop_s,
                rng=rng,
            )
        except ParityFailedError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        bundle_dir = result.path
        print(f"bundle: {bundle_dir} (model {result.manifest['model_id']})")
        if result.parity is not None:
            _print_report(result.parity.to_dict(), args.json, "parity (onnxruntime vs torch)")
    else:
        bundle_dir = args.bundle
        if args.verify:
            from csi_export.parity import check_parity, load_torch_encoder
            from csi_runtime.bundle import load_bundle

            bundle = load_bundle(bundle_dir)
            checkpoint = args.checkpoint or bundle.manifest.get("source", {}).get("checkpoint")
            if not checkpoint:
                raise ValueError("the bundle does not record its checkpoint; pass --checkpoint CKPT_DIR")
            report = check_parity(bundle, load_torch_encoder(checkpoint), rng=rng)
            _print_report(report.to_dict(), args.json, f"parity of {bundle_dir} against {checkpoint}")
            status = 0 if report.passed else 1
    if args.trt:
        from csi_export.engines import add_engine

        precision = args.precision or ("fp16" if args.fp16 else "fp32")
        entry = add_engine(
            bundle_dir,
            precision=precision,
            batch=args.batch,
            frames=args.frames,
            workspace_bytes=args.workspace_mb << 20,
            timing_cache=args.timing_cache,
            force=args.force,
            device=args.device,
        )
        print(
            f"engine: {entry['file']} (TensorRT {entry['tensorrt_version']}, "
            f"compute capability {entry['compute_capability']}, "
            f"{entry['precision']})"
        )
    return status


def _print_report(report: dict[str, Any], as_json: bool, title: str) -> None:
    from csi_export.parity import format_report

    print(json.dumps(report, indent=2) if as_json else format_report(report, title))


def _run_cli(args: argparse.Namespace) -> int:
    """``csi export``: input errors are reported by csi's own main(); TensorRT/CUDA problems here."""
    try:
        return run(args)
    except RuntimeError as exc:
        print(f"csi: error: {exc}", file=sys.stderr)
        return 2


def register(sub: Any) -> None:
    """Add ``export`` to the ``csi`` subcommand parser."""
    p = sub.add_parser(
        "export",
        help="checkpoint → model bundle (ONNX) → TensorRT engine",
        description=DESCRIPTION,
        epilog=EPILOG.replace("python export/build_engine.py", "csi export"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=_run_cli)


def main(argv: Sequence[str] | None = None) -> int:
    """``python export/build_engine.py``."""
    parser = argparse.ArgumentParser(
        prog="build_engine.py",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        print(f"build_engine.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("build_engine.py: interrupted (nothing half-written is left behind)", file=sys.stderr)
        return 130
