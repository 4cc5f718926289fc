"""The ``csi`` command line.

Subcommands available in the runtime (no torch needed)::

    csi info [--json]                       what was built, which kernels/GPU this machine uses
    csi selftest [--quick]                  checks exactness against numpy and measures speed here
    csi index build CATALOG_DIR|MANIFEST.csv -o CAT.csi [--update] [--remove WORK]   (audio, the model)
    csi index build --vectors V.npy --works W.txt [--metadata M.jsonl] --out CAT.csi
    csi identify SONG.mp3 --index CAT.csi [-k 10] [--json]
    csi monitor SOURCE --index CAT.csi --out DIR [--channel NAME] [--calibration C.json]
    csi calibrate --index CAT.csi --positives P.csv --negatives N_DIR [--far 0.01] [-o C.json]
    csi index info CAT.csi                  header of an index file
    csi index verify CAT.csi                every checksum and structural rule
    csi index search CAT.csi --queries Q.npy [-k 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from csi_runtime.audio import AudioError
from csi_runtime.errors import IndexFileError, NonFiniteError

logger = logging.getLogger("csi_runtime")


class Progress:
    """A one-line progress display on stderr (silent when stderr is not a terminal)."""

    def __init__(self, total: int, label: str, stream: TextIO = sys.stderr) -> None:
        self.total, self.label, self.stream = max(1, total), label, stream
        self.enabled = stream.isatty()
        self.start = time.monotonic()
        self.done = 0

    def advance(self, n: int) -> None:
        self.done += n
        if self.enabled:
            frac = min(1.0, self.done / self.total)
            rate = self.done / max(1e-9, time.monotonic() - self.start)
            bar = "#" * int(30 * frac)
            self.stream.write(f"\r{self.label} [{bar:<30}] {100 * frac:5.1f}% {rate:,.0f}/s")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def console_logging(package: str, verbose: bool = False) -> None:
    """Show a package's log records on stderr with a time stamp (for commands that run long work);
    idempotent, and the records do not also reach the root logger's handler."""
    log = logging.getLogger(package)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


# -- info ------------------------------------------------------------------------------------


def _model_info() -> dict[str, Any]:
    """The packaged default model and the inference backends this machine has."""
    import importlib.util

    from csi_runtime.bundle import BundleError, load_bundle
    from csi_runtime.embedder import default_bundle_path

    out: dict[str, Any] = {"default_bundle": str(default_bundle_path())}
    try:
        bundle = load_bundle(default_bundle_path(), verify_hashes=False)
        m = bundle.manifest
        out.update(model_id=bundle.model_id, dim=bundle.dim, sample_rate=bundle.sample_rate,
                   window_s=m["encoder"]["window_s"], hop_s=m["encoder"]["hop_s"],
                   val_metrics=m.get("source", {}).get("metrics", {}).get("val", {}))  # fmt: skip
    except BundleError as exc:
        out["error"] = str(exc)
    try:
        import onnxruntime

        out["onnxruntime"] = {
            "version": onnxruntime.__version__,
            "providers": onnxruntime.get_available_providers(),
        }
    except ImportError:
        out["onnxruntime"] = None
    out["tensorrt"] = importlib.util.find_spec("tensorrt") is not None
    return out


def cmd_info(args: argparse.Namespace) -> int:
    from csi_runtime import build_info, default_threads

    info = build_info()
    info["threads_default"] = default_threads()
    info["model"] = _model_info()
    if args.json:
        _print_json(info)
        return 0
    cpu, cuda = info["cpu"], info["cuda"]
    print(f"csi {info['version']}")
    print(f"  CPU kernels : {cpu['kernels_selected']} (supported: {', '.join(cpu['kernels_supported'])})")
    print(f"  compiler    : {cpu['compiler']}")
    print(f"  threads     : {info['threads_default']} (set CSI_NUM_THREADS to change)")
    if not cuda["built"]:
        print("  CUDA        : not built (no nvcc at install time)")
    else:
        print(
            f"  CUDA        : built for sm_{', sm_'.join(cuda['archs'])} + PTX {cuda['ptx']}, "
            f"nvcc {cuda['nvcc']}"
        )
        if cuda["devices"]:
            for i, dev in enumerate(cuda["devices"]):
                print(f"  GPU {i}       : {dev['name']} (compute capability {dev['compute_capability']})")
        else:
            print("  GPU         : none usable (no NVIDIA GPU or driver)")
    model = info["model"]
    if "model_id" in model:
        print(f"  model       : {model['model_id']} ({model['dim']}-d, {model['sample_rate']} Hz, "
              f"window {model['window_s']} s, hop {model['hop_s']} s)")  # fmt: skip
    else:
        print(f"  model       : none usable ({model.get('error')})")
    ort_info = model["onnxruntime"]
    print(f"  onnxruntime : {ort_info['version']} ({', '.join(ort_info['providers'])})" if ort_info
          else "  onnxruntime : not installed")  # fmt: skip
    print(f"  TensorRT    : {'installed' if model['tensorrt'] else 'not installed (optional)'}")
    return 0


# -- selftest --------------------------------------------------------------------------------


def cmd_selftest(args: argparse.Namespace) -> int:
    from csi_runtime import ReferenceIndex, _native, quantize_int8
    from csi_runtime.ranking import topk_cpu
    from csi_runtime.threads import default_threads

    rng = np.random.default_rng(args.seed)
    threads = default_threads()
    n, d = (200_000, 256) if args.quick else (1_000_000, 256)
    print(f"csi selftest: N={n:,} reference vectors, D={d}, {threads} threads")
    bw = _native.cpu.memory_read_bandwidth(1 << 30 if not args.quick else 1 << 28, threads, 3)
    print(f"  measured memory read bandwidth : {bw / 1e9:6.1f} GB/s")

    base = rng.standard_normal((n, d), dtype=np.float32)
    storages: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
        "float32": (base, None),
        "float16": (base.astype(np.float16), None),
        "int8": quantize_int8(base),
    }
    q_small = rng.standard_normal((1, d), dtype=np.float32)
    q_batch = rng.standard_normal((64, d), dtype=np.float32)
    failures = 0
    print("  storage   exact   Q=1 scan (% of the array's read rate)   Q=64 batch")
    for name, (refs, scales) in storages.items():
        # Exactness on a subset against float64 numpy (the full check lives in the test suite).
        sub = refs[:20_000]
        sub_scales = None if scales is None else scales[:20_000]
        ok = True
        for isa in _native.cpu.supported_isas():
            _, idx = topk_cpu(q_batch[:8], sub, sub_scales, 10, "ip", threads, isa)
            dense = sub.astype(np.float64) * (1.0 if sub_scales is None else sub_scales[:, None])
            truth = np.argsort(-(q_batch[:8].astype(np.float64) @ dense.T), axis=1, kind="stable")[:, :10]
            ok &= bool((np.sort(idx, 1) == np.sort(truth, 1)).mean() > 0.99)
        failures += not ok
        # A one-query scan is compared with how fast these very pages read, measured around it
        # (the better of before and after: the rate of fresh pages can change meanwhile).
        ceiling = _native.cpu.read_rate(refs, threads, 3)
        t1 = _time(lambda r=refs, s=scales: topk_cpu(q_small, r, s, 10, "ip", threads), 5)
        ceiling = max(ceiling, _native.cpu.read_rate(refs, threads, 3))
        t64 = _time(lambda r=refs, s=scales: topk_cpu(q_batch, r, s, 10, "ip", threads), 2)
        gbs = refs.nbytes / t1 / 1e9
        gflops = 2 * 64 * n * d / t64 / 1e9
        print(
            f"  {name:<8}  {'ok' if ok else 'FAIL':<6}  {t1 * 1e3:7.1f} ms {gbs:5.1f} GB/s"
            f" ({100 * gbs * 1e9 / ceiling:3.0f}%)  {t64 * 1e3:7.1f} ms {gflops:6.1f} GFLOP/s"
        )

    index = ReferenceIndex(d, dtype="float16")
    works = [f"work-{i // 4}" for i in range(20_000)]
    index.add(base[:20_000] / np.linalg.norm(base[:20_000], axis=1, keepdims=True), works)
    probe = base[4 * 123 + 2] / np.linalg.norm(base[4 * 123 + 2])
    hit = index.search(probe, 1)[0][0]
    found = hit.work_id == "work-123"
    failures += not found
    print(
        f"  reference index: {len(index):,} vectors / {index.num_works:,} works, "
        f"top hit {hit.work_id} ({hit.score:.3f}) {'ok' if found else 'FAIL'}"
    )
    print("selftest passed" if not failures else f"selftest FAILED ({failures} problems)")
    return 0 if not failures else 1


def _time(fn: Any, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# -- index -----------------------------------------------------------------------------------


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"csi: cannot read {what} from {path}: {exc}") from None
    if arr.ndim != 2 or arr.dtype.kind != "f":
        raise SystemExit(f"csi: {what} in {path} must be a 2-D float array (got {arr.dtype} {arr.shape})")
    return arr


def _read_lines(path: Path) -> list[str]:
    try:
        return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"csi: cannot read {path}: {exc}") from None


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    for lineno, line in enumerate(_read_lines(path), 1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"csi: {path}:{lineno}: not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise SystemExit(f"csi: {path}:{lineno}: each line must be a JSON object")
        yield value


def _window_scales(text: str) -> tuple[float, ...]:
    from csi_runtime.catalog import check_window_scales

    try:
        return check_window_scales([float(x) for x in text.split(",")])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--window-scales must be distinct positive numbers separated by commas (got {text!r})"
        ) from None


def cmd_index_build(args: argparse.Namespace) -> int:
    from csi_runtime import ReferenceIndex

    if args.vectors is None:
        if args.works:
            raise SystemExit("csi: --works goes with --vectors")
        if not args.source and not args.remove:
            raise SystemExit("csi: give a catalog folder or manifest, or --vectors V.npy --works W.txt")
        from csi_runtime.cli_audio import cmd_index_build_audio

        return cmd_index_build_audio(args)
    if args.source or args.update or args.remove:
        raise SystemExit(
            "csi: --vectors builds a new index; audio sources, --update and --remove use the model"
        )
    if args.window_scales or args.hop_s is not None:
        raise SystemExit("csi: --window-scales and --hop-s window audio; --vectors are embedded already")
    if not args.works:
        raise SystemExit("csi: --vectors needs --works (one work id per line)")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise SystemExit(f"csi: {out} exists; pass --force to replace it")
    vectors = _load_npy(Path(args.vectors), "vectors")
    works = _read_lines(Path(args.works))
    if len(works) != vectors.shape[0]:
        raise SystemExit(f"csi: {args.works} lists {len(works)} work ids for {vectors.shape[0]} vectors")
    metadata = list(_read_jsonl(Path(args.metadata))) if args.metadata else None
    if metadata is not None and len(metadata) != vectors.shape[0]:
        raise SystemExit(f"csi: {args.metadata} has {len(metadata)} lines for {vectors.shape[0]} vectors")
    index = ReferenceIndex(vectors.shape[1], dtype=args.dtype, metric=args.metric)
    progress = Progress(vectors.shape[0], "adding")
    chunk = 65_536
    for start in range(0, vectors.shape[0], chunk):
        stop = min(start + chunk, vectors.shape[0])
        index.add(vectors[start:stop], works[start:stop], None if metadata is None else metadata[start:stop])
        progress.advance(stop - start)
    progress.close()
    index.save(out)
    print(f"wrote {out}: {len(index):,} vectors, {index.num_works:,} works, {args.dtype}, {args.metric}")
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    from csi_runtime import index_format

    footer, sections = index_format.read_footer(args.path)
    if args.json:
        _print_json(footer)
        return 0
    print(
        f"{args.path}: csi reference index, format v{footer['format_version']} "
        f"(csi {footer['library_version']})"
    )
    print(
        f"  {footer['count']:,} vectors, {footer['num_works']:,} works, D={footer['dim']}, "
        f"{footer['dtype']}, metric {footer['metric']}, created {footer['created_utc']}"
    )
    for name, s in sections.items():
        print(f"  section {name:<13} {s.nbytes:>14,} bytes  {s.dtype:<4} {list(s.shape)}")
    return 0


def cmd_index_verify(args: argparse.Namespace) -> int:
    from csi_runtime import ReferenceIndex

    info = ReferenceIndex.verify_file(args.path)
    print(f"{args.path}: OK ({info['count']:,} vectors, {info['num_works']:,} works, all checksums match)")
    return 0


def cmd_index_search(args: argparse.Namespace) -> int:
    from csi_runtime import ReferenceIndex

    index = ReferenceIndex.load(args.path, mmap=args.mmap)
    queries = _load_npy(Path(args.queries), "queries")
    hits = index.search(np.asarray(queries), args.k, device=args.device)
    if args.json:
        _print_json([[h._asdict() for h in row] for row in hits])
        return 0
    for qi, row in enumerate(hits):
        print(f"query {qi}:")
        for rank, h in enumerate(row, 1):
            meta = json.dumps(h.metadata, ensure_ascii=False) if h.metadata else ""
            print(f"  {rank:>3}. {h.work_id!s:<24} {h.score:10.4f}  {meta}")
    return 0


# -- entry point -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from csi_runtime import cli_audio

    parser = argparse.ArgumentParser(
        prog="csi", description="csi: version identification from training to broadcast monitoring"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="what was built and what this machine can use")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("selftest", help="check exactness against numpy and measure speed on this machine")
    p.add_argument("--quick", action="store_true", help="smaller problem (a few seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_selftest)

    idx = sub.add_parser(
        "index", help="build, inspect, verify and search reference index files"
    ).add_subparsers(dest="index_command", required=True)
    p = idx.add_parser(
        "build",
        help="build or update an index from audio (catalog folder or manifest) or precomputed embeddings",
    )
    p.add_argument(
        "source", nargs="?", help="catalog folder (one sub-folder per work) or CSV manifest path,work_id,…"
    )
    p.add_argument("--vectors", help=".npy file, float [N, D] (precomputed embeddings instead of audio)")
    p.add_argument("--works", help="with --vectors: text file, one work id per line, N lines")
    p.add_argument("--metadata", help="JSON-lines file: one object per vector (title, artist, ...)")
    p.add_argument("-o", "--out", required=True, help="index file to write (.csi)")
    p.add_argument("--dtype", default="float16", choices=["float32", "float16", "int8"])
    p.add_argument("--metric", default="ip", choices=["ip", "l2"], help="with --vectors only (audio: ip)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--update", action="store_true", help="add recordings not yet in the existing index")
    p.add_argument("--remove", action="append", metavar="WORK_ID", help="remove a work (repeatable)")
    cli_audio.add_model_args(p)
    p.add_argument(
        "--hop-s", type=float, default=None, help="hop between reference windows, s (default: window/4)"
    )
    p.add_argument(
        "--window-scales",
        type=_window_scales,
        default=None,
        help="reference window lengths as fractions of the model's window, comma-separated "
        "(default 1,0.7,1.4: covers at another tempo; 1 for the model's window only)",
    )
    p.set_defaults(func=cmd_index_build)

    p = idx.add_parser("info", help="print an index file's header")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_index_info)

    p = idx.add_parser("verify", help="check every checksum of an index file")
    p.add_argument("path")
    p.set_defaults(func=cmd_index_verify)

    p = idx.add_parser("search", help="search an index with query vectors from a .npy file")
    p.add_argument("path")
    p.add_argument("--queries", required=True, help=".npy file, float [Q, D]")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--mmap", action="store_true", help="map the index instead of loading it")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_index_search)
    cli_audio.register(sub, idx)
    _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: Any) -> None:
    """Subcommands other installed packages declare in the ``csi.commands`` entry-point group.

    csi_training adds ``train``, ``eval`` and ``data`` this way, so the runtime never imports the
    training side (or torch) unless one of those commands runs.
    """
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group="csi.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except Exception as exc:  # a broken optional plugin must not take the runtime CLI down
            logger.debug("csi command plugin %s unavailable: %s", ep.value, exc)
            continue
        register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except (IndexFileError, NonFiniteError, ValueError, TypeError, KeyError, OSError, AudioError) as exc:
        print(f"csi: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # backend or stream problems (no GPU, TensorRT missing, source lost)
        print(f"csi: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("csi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
