"""Parity of a bundle with the model it came from: onnxruntime (the bundle's graphs) against torch.

Two audio sets, both fresh per call unless seeded:
- ``random``: white and pink noise, a log chirp, random chords, silence with a click, at several
  lengths from the shortest the graphs accept to 30 s;
- ``rendered``: a fixed mini-catalog of versions rendered by the fast synthesiser from random
  melodies (``MINI_WORKS`` works × ``MINI_VERSIONS`` versions, 20 s each: other key, tempo,
  instruments, room and mix per version), the set the fp16 retrieval check ranks.

The torch side is the checkpoint's own :class:`~csi_training.models.Encoder` (centred frames), the
onnxruntime side is exactly what the runtime does: pad ``context`` zeros on both sides, run
``frontend.onnx`` (valid framing), then the encoder graph. fp32 must agree within
``FP32_MAX_ABS`` and ``FP32_MIN_COSINE``; the fp16 encoder within ``FP16_MIN_COSINE`` and with
``FP16_MIN_TOP10_OVERLAP`` of each query's ten nearest neighbours unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csi_runtime.bundle import ModelBundle

__all__ = [
    "FP16_MIN_COSINE",
    "FP16_MIN_TOP10_OVERLAP",
    "FP32_MAX_ABS",
    "FP32_MIN_COSINE",
    "ParityReport",
    "check_parity",
    "format_report",
    "random_audio",
    "rendered_audio",
]

logger = logging.getLogger(__name__)

FP32_MAX_ABS = 1e-4
# A float32 DFT leaves power residue about 1e-7 of a frame's energy in bins that should be empty, so
# dB features far below a frame's peak are float32 noise, in torch as much as in the graph (measured:
# a 0.5-amplitude sine, n_fft 512, at the -100 dB floor: torch fp32 vs float64 0.007 dB, graph vs
# torch 0.012 dB). dB features are therefore compared as power, relative to the strongest band of
# their frame (measured: 1.2e-6 graph vs torch, 1.2e-6 torch fp32 vs float64), against FP32_MAX_ABS.
FP32_MIN_COSINE = 0.9999
FP16_MIN_COSINE = 0.999
FP16_MIN_TOP10_OVERLAP = 0.99
MINI_WORKS = 16
MINI_VERSIONS = 4
MINI_SEED = 20261121  # the rendered mini-catalog is the same in every report
MINI_CLIP_S = 20.0


def random_audio(
    sample_rate: int, min_samples: int, rng: np.random.Generator
) -> list[tuple[str, np.ndarray]]:
    """Named test signals, float32 mono, from the shortest valid length to 30 s."""
    lengths = sorted(
        {
            min_samples,
            min_samples + int(rng.integers(1, sample_rate)),
            7 * sample_rate + 123,
            30 * sample_rate,
        }
    )
    out: list[tuple[str, np.ndarray]] = []
    for n in lengths:
        t = np.arange(n) / sample_rate
        white = rng.standard_normal(n) * 0.1
        pink = np.cumsum(rng.standard_normal(n))
        pink = (pink - np.convolve(pink, np.ones(256) / 256, mode="same")) * 0.02
        f0, f1 = 40.0, min(7000.0, sample_rate * 0.45)
        chirp = 0.5 * np.sin(
            2 * np.pi * f0 * (n / sample_rate) / np.log(f1 / f0) * ((f1 / f0) ** (t / t[-1]) - 1)
        )
        chord = sum(0.2 * np.sin(2 * np.pi * 440.0 * 2 ** (rng.integers(-24, 13) / 12) * t) for _ in range(3))
        click = np.zeros(n)
        click[n // 2] = 1.0
        for name, signal in (
            ("white", white),
            ("pink", pink),
            ("chirp", chirp),
            ("chord", chord),
            ("click", click),
        ):
            out.append((f"{name}_{n / sample_rate:.2f}s", np.asarray(signal, np.float32)))
    return out


def _random_melody_work(work_id: str, rng: np.random.Generator) -> Any:
    from csi_training.render import notes

    n = int(rng.integers(40, 64))
    scale = np.array([0, 2, 4, 5, 7, 9, 11])
    degree = np.cumsum(rng.integers(-2, 3, n))
    pitch = 60 + 12 * (degree // 7) + scale[degree % 7]
    pitch = np.clip(pitch, 48, 84)
    durations = rng.choice([0.5, 1.0, 1.0, 1.5, 2.0], n)
    melody = np.zeros(n, dtype=notes.NOTE_DTYPE)
    melody["onset_beats"] = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    melody["duration_beats"] = durations
    melody["pitch"] = pitch
    melody["velocity"] = 90
    bars = int(np.ceil(melody["onset_beats"][-1] / 4)) + 1
    roots = 36 + rng.choice([0, 5, 7, 9], bars)
    bass = np.zeros(bars, dtype=notes.NOTE_DTYPE)
    bass["onset_beats"] = np.arange(bars) * 4.0
    bass["duration_beats"] = 4.0
    bass["pitch"] = roots
    bass["velocity"] = 70
    return notes.make_work(
        work_id,
        [("melody", 0, melody), ("bass", 32, bass)],
        tempo_bpm=float(rng.uniform(90, 140)),
        source="parity",
    )


def rendered_audio(sample_rate: int, seed: int = MINI_SEED) -> tuple[list[np.ndarray], list[str]]:
    """The mini-catalog: MINI_WORKS × MINI_VERSIONS clips of MINI_CLIP_S seconds and their work ids."""
    from csi_training.render.corpus import render_version
    from csi_training.render.versions import make_versions

    rng = np.random.default_rng(seed)
    clips, works = [], []
    for w in range(MINI_WORKS):
        work = _random_melody_work(f"mini{w:02d}", rng)
        for params in make_versions(work, MINI_VERSIONS, seed=seed + w):
            audio = render_version(
                work, params, "synth", sample_rate, max_duration_s=MINI_CLIP_S, offline=False
            )
            clips.append(audio.astype(np.float32))
            works.append(work.work_id)
    return clips, works


@dataclass
class ParityReport:
    """Worst-case agreement figures and whether each meets its bound."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r["passed"] for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": self.rows}


class _OrtBundle:
    """The runtime's path through a bundle, on onnxruntime CPU (one thread: reproducible, and fair
    on a loaded machine)."""

    def __init__(self, bundle: ModelBundle, encoder_graph: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.bundle = bundle
        self.frontend = ort.InferenceSession(str(bundle.graph_path("frontend")), options, providers=providers)
        self.encoder = ort.InferenceSession(
            str(bundle.graph_path(encoder_graph)), options, providers=providers
        )

    def features(self, waveforms: np.ndarray) -> np.ndarray:
        """[B, n] → [B, n_features, T] with centred framing (the file path)."""
        padded = self.bundle.pad_for_file(np.asarray(waveforms, np.float32))
        return self.frontend.run(None, {"waveform": padded})[0]

    def embed(self, waveforms: np.ndarray) -> np.ndarray:
        return self.encoder.run(None, {"features": self.features(waveforms)})[0]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def _top10_overlap(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean fraction of each item's 10 nearest neighbours (itself excluded) that both embeddings share."""
    k = min(10, len(reference) - 1)
    overlaps = []
    for emb in (reference, other):
        sim = emb.astype(np.float64) @ emb.astype(np.float64).T
        np.fill_diagonal(sim, -np.inf)
        overlaps.append(np.argsort(-sim, axis=1, kind="stable")[:, :k])
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(*overlaps, strict=True)]))


def check_parity(
    bundle: ModelBundle,
    encoder: Any,
    rng: np.random.Generator | None = None,
    fp16: bool | None = None,
    mini_set: tuple[list[np.ndarray], list[str]] | None = None,
) -> ParityReport:
    """Compare the bundle's graphs (onnxruntime) with ``encoder`` (the checkpoint's torch Encoder, fp32).

    fp16: also check the bundle's ``encoder_fp16`` graph (default: when the bundle has one).
    """
    rng = rng if rng is not None else np.random.default_rng()
    fp16 = ("encoder_fp16" in bundle.manifest["graphs"]) if fp16 is None else fp16
    encoder = encoder.eval()
    sr = bundle.sample_rate
    ort32 = _OrtBundle(bundle, "encoder")
    ort16 = _OrtBundle(bundle, "encoder_fp16") if fp16 else None
    report = ParityReport()

    def torch_embed(waveforms: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return encoder(torch.from_numpy(np.ascontiguousarray(waveforms))).float().numpy()

    min_samples = int(bundle.manifest["frontend"]["min_samples_file"])
    signals = random_audio(sr, min_samples, rng)
    ref = np.concatenate([torch_embed(s[None]) for _, s in signals])
    got = np.concatenate([ort32.embed(s[None]) for _, s in signals])
    db_features = bundle.manifest["frontend"].get("params", {}).get("log") == "db"

    def feature_error(waveform: np.ndarray) -> float:
        with torch.inference_mode():
            ref_f = encoder.frontend(torch.from_numpy(waveform[None])).numpy().astype(np.float64)
        got_f = ort32.features(waveform[None]).astype(np.float64)
        if not db_features:
            return float(np.abs(got_f - ref_f).max())
        ref_p, got_p = 10.0 ** (ref_f / 10.0), 10.0 ** (got_f / 10.0)  # power, whatever the dB scale
        return float((np.abs(got_p - ref_p) / ref_p.max(axis=1, keepdims=True)).max())

    feat_err = max(feature_error(s) for _, s in signals[:: max(1, len(signals) // 5)])
    report.rows.append(
        _row(
            "frontend fp32 vs torch, random audio",
            "max |ΔP|/frame peak" if db_features else "max |Δ feature|",
            feat_err,
            FP32_MAX_ABS,
            "<=",
        )
    )
    report.rows.append(
        _row("fp32 vs torch, random audio", "max |Δ|", float(np.abs(ref - got).max()), FP32_MAX_ABS, "<=")
    )
    report.rows.append(
        _row(
            "fp32 vs torch, random audio",
            "min cosine",
            float(_cosines(ref, got).min()),
            FP32_MIN_COSINE,
            ">=",
        )
    )

    clips, _ = mini_set if mini_set is not None else rendered_audio(sr)
    n = min(len(c) for c in clips)
    batch = np.stack([c[:n] for c in clips])
    ref_r = np.concatenate([torch_embed(batch[i : i + 16]) for i in range(0, len(batch), 16)])
    got_r = np.concatenate([ort32.embed(batch[i : i + 16]) for i in range(0, len(batch), 16)])
    single = np.concatenate([ort32.embed(batch[i : i + 1]) for i in range(0, len(batch), len(batch) // 4)])
    report.rows.append(
        _row(
            f"fp32 vs torch, rendered mini-set ({len(clips)} clips, batch 16)",
            "max |Δ|",
            float(np.abs(ref_r - got_r).max()),
            FP32_MAX_ABS,
            "<=",
        )
    )
    report.rows.append(
        _row(
            f"fp32 vs torch, rendered mini-set ({len(clips)} clips, batch 16)",
            "min cosine",
            float(_cosines(ref_r, got_r).min()),
            FP32_MIN_COSINE,
            ">=",
        )
    )
    report.rows.append(
        _row(
            "fp32 batch 1 vs batch 16",
            "max |Δ|",
            float(np.abs(single - got_r[:: len(batch) // 4]).max()),
            FP32_MAX_ABS,
            "<=",
        )
    )
    if ort16 is not None:
        half_r = np.concatenate([ort16.embed(batch[i : i + 16]) for i in range(0, len(batch), 16)])
        half_random = np.concatenate([ort16.embed(s[None]) for _, s in signals])
        report.rows.append(
            _row(
                "fp16 vs fp32 torch, random audio",
                "min cosine",
                float(_cosines(ref, half_random).min()),
                FP16_MIN_COSINE,
                ">=",
            )
        )
        report.rows.append(
            _row(
                "fp16 vs fp32 torch, rendered mini-set",
                "min cosine",
                float(_cosines(ref_r, half_r).min()),
                FP16_MIN_COSINE,
                ">=",
            )
        )
        report.rows.append(
            _row(
                "fp16 vs fp32 torch, rendered mini-set",
                "top-10 overlap",
                _top10_overlap(ref_r, half_r),
                FP16_MIN_TOP10_OVERLAP,
                ">=",
            )
        )
    logger.info("parity %s", "passed" if report.passed else "FAILED")
    return report


def _row(check: str, measure: str, value: float, bound: float, op: str) -> dict[str, Any]:
    passed = bool(value <= bound) if op == "<=" else bool(value >= bound)
    return {"check": check, "measure": measure, "value": value, "bound": f"{op} {bound:g}", "passed": passed}


def format_report(report: ParityReport | dict[str, Any], title: str = "") -> str:
    """A plain-text table of a report (or of its to_dict())."""
    rows = report.rows if isinstance(report, ParityReport) else report["checks"]
    passed = report.passed if isinstance(report, ParityReport) else report["passed"]
    width = max(len(r["check"]) for r in rows)
    lines = [title] if title else []
    lines.append(f"{'check':<{width}}  {'measure':<15} {'value':>12}  {'bound':<10} ok")
    for r in rows:
        value = f"{r['value']:.3e}" if "Δ" in r["measure"] else f"{r['value']:.6f}"
        lines.append(
            f"{r['check']:<{width}}  {r['measure']:<15} {value:>12}  {r['bound']:<10} "
            f"{'yes' if r['passed'] else 'NO'}"
        )
    lines.append("parity: PASSED" if passed else "parity: FAILED")
    return "\n".join(lines)


def load_torch_encoder(checkpoint: str | Path) -> torch.nn.Module:
    """The checkpoint's Encoder on CPU in eval mode (the torch side of the comparison)."""
    from csi_training.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint).encoder.eval()
