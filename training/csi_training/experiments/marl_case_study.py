"""MARL's case study: does a multi-view VAE put timbre in the shared latent and pitch in the private ones?

Reproduces the controlled experiment of "Self-Supervised Multi-View Learning for Disentangled Music
Audio Representations" (ISMIR 2024 LBD) on CPU in a few minutes::

    python -m csi_training.experiments.marl_case_study --out docs/results/marl.md

Data: band-limited tones (csi_training.render.tones): waveform type (sine, square, sawtooth,
triangle) uniform, frequency log-uniform in 110-1760 Hz, level -24..-3 dBFS, random phase; 192 ms at
16 kHz → log-mel (64 slaney mels to 8 kHz, n_fft 1024, hop 256, no centring: 9 frames) → dB
normalised per patch to [0, 1] ((dB - peak + 80) / 80, clipped), which removes the level. A pair is
two tones of the same waveform type with independent frequencies, levels and phases. Training draws
pairs from a pool of 2,000 tones per type; evaluation uses 3,000 pairs of 1,000 other tones per type.

Model: csi_training.models.marl.MultiViewVAE (8-d shared latent, product of experts; 8-d private
latent per view; MLP 576-256-128), Adam 1e-3, batches of 128 pairs. Every variant of the ablation
(alpha, beta, gamma of the beta-TCVAE terms per subspace) trains from the same seed(s).

Evaluation on the posterior means of the held-out pairs (view 1's private latent, view 1's frequency;
the views are exchangeable):

- MI matrix: normalised mutual information I(factor; code) / H(factor) between the factors (timbre:
  4 classes; frequency: 20 equal-frequency bins of log f) and each latent dimension (20 quantile bins)
  or each subspace (k-means codes, 32 clusters); csi_training.disentanglement documents the estimator.
- MLP probes (csi_training.disentanglement.probe_accuracy, 70/30 split): timbre class (chance 25 %)
  and pitch class (8 half-octave bins of the 4-octave range, chance 12.5 %) from the shared latent,
  the private latent, and both.
- separation = (timbre acc. shared - timbre acc. private) + (pitch acc. private - pitch acc. shared):
  high when timbre lives in the shared latent and pitch in the private one.

Writes a Markdown report to ``--out`` and the same figures as JSON next to it (``.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csi_runtime.atomic import atomic_write_text
from csi_training.disentanglement import (
    entropy,
    kmeans_codes,
    mutual_information,
    probe_accuracy,
    quantile_bins,
)
from csi_training.frontends.config import MelConfig
from csi_training.frontends.mel import LogMel
from csi_training.losses.tcvae import Estimator
from csi_training.models.marl import MARLWeights, MultiViewVAE, fit_multiview_vae
from csi_training.render.tones import WAVEFORMS, ToneConfig, ToneFactors, render_tones, sample_tone_factors

logger = logging.getLogger("csi_training.experiments.marl_case_study")

MEL = MelConfig(sample_rate=16000, n_fft=1024, hop_length=256, center=False, n_mels=64, fmax=8000.0)
TOP_DB = 80.0  # dynamic range kept by the per-patch normalisation
PITCH_CLASSES = 8  # half-octave bins over the 4-octave frequency range
MI_BINS = 20  # quantile bins per latent dimension and for log-frequency
SUBSPACE_CLUSTERS = 32

#: (name, alpha, beta, gamma): the seed's ablation (each term alone) plus the full KL.
VARIANTS: tuple[tuple[str, float, float, float], ...] = (
    ("recon only", 0.0, 0.0, 0.0),
    ("alpha=1", 1.0, 0.0, 0.0),
    ("beta=1", 0.0, 1.0, 0.0),
    ("gamma=0.1", 0.0, 0.0, 0.1),
    ("gamma=1", 0.0, 0.0, 1.0),
    ("alpha=beta=gamma=1", 1.0, 1.0, 1.0),
)


def normalised_log_mel(waveforms: np.ndarray, batch: int = 1024) -> np.ndarray:
    """float32 [N, n_samples] at 16 kHz → normalised log-mel float32 [N, 64, frames] in [0, 1]."""
    frontend = LogMel(MEL)
    out = []
    with torch.no_grad():
        for start in range(0, len(waveforms), batch):
            db = frontend(torch.from_numpy(waveforms[start : start + batch]))
            peak = db.amax(dim=(1, 2), keepdim=True)
            out.append(((db - peak + TOP_DB) / TOP_DB).clamp(0.0, 1.0).numpy())
    return np.concatenate(out).astype(np.float32)


@dataclass
class TonePool:
    """Tones with their factors and normalised log-mel patches (features [N, 64, 9])."""

    factors: ToneFactors
    features: np.ndarray

    @classmethod
    def render(cls, rng: np.random.Generator, per_waveform: int, config: ToneConfig) -> TonePool:
        kinds = np.repeat(np.arange(len(WAVEFORMS)), per_waveform)
        factors = sample_tone_factors(rng, len(kinds), config, waveform=kinds)
        return cls(factors, normalised_log_mel(render_tones(factors, config)))

    @property
    def n_views(self) -> int:
        """Distinct single tones."""
        return len(self.factors)

    @property
    def n_pairs(self) -> int:
        """Distinct ordered pairs of two different tones of one waveform type."""
        counts = np.bincount(self.factors.waveform, minlength=len(WAVEFORMS)).astype(np.int64)
        return int((counts * (counts - 1)).sum())

    def pairs(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n index pairs [n, 2] of two different tones of one waveform type (type uniform)."""
        by_kind = [np.flatnonzero(self.factors.waveform == k) for k in range(len(WAVEFORMS))]
        kinds = rng.integers(0, len(WAVEFORMS), size=n)
        out = np.empty((n, 2), dtype=np.int64)
        for k, members in enumerate(by_kind):
            rows = np.flatnonzero(kinds == k)
            first = rng.integers(0, len(members), size=len(rows))
            second = (first + rng.integers(1, len(members), size=len(rows))) % len(members)
            out[rows, 0], out[rows, 1] = members[first], members[second]
        return out


def pitch_class(frequency_hz: np.ndarray, config: ToneConfig) -> np.ndarray:
    """Half-octave bin (int64, 0..PITCH_CLASSES-1) of each frequency in [fmin_hz, fmax_hz]."""
    span = np.log(config.fmax_hz / config.fmin_hz)
    position = np.log(frequency_hz / config.fmin_hz) / span
    return np.clip((position * PITCH_CLASSES).astype(np.int64), 0, PITCH_CLASSES - 1)


def train_variant(
    pool: TonePool,
    weights: MARLWeights,
    seed: int,
    steps: int,
    batch: int,
    lr: float,
    estimator: Estimator = "weighted",
) -> tuple[MultiViewVAE, dict[str, float]]:
    """Train one MultiViewVAE on pairs of the pool; returns it and the mean statistics of the last
    10 % of the steps."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MultiViewVAE(MEL.n_mels, pool.features.shape[2])
    features = torch.from_numpy(pool.features)
    stats = fit_multiview_vae(
        model,
        lambda: features[torch.from_numpy(pool.pairs(rng, batch))],
        weights,
        steps,
        lr,
        pool.n_views,
        pool.n_pairs,
        estimator,
    )
    return model, stats


def evaluate_variant(
    model: MultiViewVAE, pool: TonePool, pairs: np.ndarray, config: ToneConfig, seed: int
) -> dict[str, Any]:
    """MI matrices and probe accuracies of the model on held-out pairs (see the module doc)."""
    model.eval()
    with torch.no_grad():
        shared, private = model.embed(torch.from_numpy(pool.features[pairs]))
    latents = {
        "shared": shared.numpy().astype(np.float64),
        "private": private[:, 0].numpy().astype(np.float64),
    }
    first = pairs[:, 0]
    timbre = pool.factors.waveform[first]
    frequency = pool.factors.frequency_hz[first]
    factors = {"timbre": timbre, "frequency": quantile_bins(np.log(frequency), MI_BINS)}
    entropies = {name: entropy(codes) for name, codes in factors.items()}
    subspace: dict[str, dict[str, float]] = {}
    per_dim: dict[str, dict[str, list[float]]] = {}
    for factor, codes in factors.items():
        subspace[factor], per_dim[factor] = {}, {}
        for space, z in latents.items():
            clusters = kmeans_codes(z, SUBSPACE_CLUSTERS, seed=seed)
            subspace[factor][space] = mutual_information(codes, clusters) / entropies[factor]
            per_dim[factor][space] = [
                mutual_information(codes, quantile_bins(z[:, d], MI_BINS)) / entropies[factor]
                for d in range(z.shape[1])
            ]
    pitch = pitch_class(frequency, config)
    inputs = {**latents, "both": np.concatenate([latents["shared"], latents["private"]], axis=1)}
    probes = {
        task: {space: probe_accuracy(x, labels, seed=seed) for space, x in inputs.items()}
        for task, labels in (("timbre", timbre), ("pitch", pitch))
    }
    separation = (probes["timbre"]["shared"] - probes["timbre"]["private"]) + (
        probes["pitch"]["private"] - probes["pitch"]["shared"]
    )
    return {"nmi_subspace": subspace, "nmi_per_dim": per_dim, "probe": probes, "separation": separation}


def run(
    seeds: list[int],
    steps: int,
    batch: int,
    lr: float,
    variants: tuple[tuple[str, float, float, float], ...],
    train_per_waveform: int = 2000,
    eval_per_waveform: int = 1000,
    n_eval_pairs: int = 3000,
    estimator: Estimator = "weighted",
) -> dict[str, Any]:
    """Train and evaluate every variant with every seed; the report as a JSON-ready dict."""
    config = ToneConfig()
    t0 = time.monotonic()
    data_rng = np.random.default_rng(12345)
    train_pool = TonePool.render(data_rng, train_per_waveform, config)
    eval_pool = TonePool.render(data_rng, eval_per_waveform, config)
    eval_pairs = eval_pool.pairs(data_rng, n_eval_pairs)
    logger.info(
        "rendered %d + %d tones in %.1f s",
        len(train_pool.factors),
        len(eval_pool.factors),
        time.monotonic() - t0,
    )
    results: list[dict[str, Any]] = []
    for name, alpha, beta, gamma in variants:
        for seed in seeds:
            t1 = time.monotonic()
            weights = MARLWeights(alpha, beta, gamma)
            model, train_stats = train_variant(train_pool, weights, seed, steps, batch, lr, estimator)
            metrics = evaluate_variant(model, eval_pool, eval_pairs, config, seed)
            cpu_s = time.monotonic() - t1
            logger.info(
                "%s seed %d: recon %.1f, timbre acc shared/private %.2f/%.2f, pitch %.2f/%.2f (%.0f s)",
                name,
                seed,
                train_stats["recon"],
                metrics["probe"]["timbre"]["shared"],
                metrics["probe"]["timbre"]["private"],
                metrics["probe"]["pitch"]["shared"],
                metrics["probe"]["pitch"]["private"],
                cpu_s,
            )
            results.append(
                {
                    "variant": name,
                    "weights": asdict(weights),
                    "seed": seed,
                    "train": train_stats,
                    **metrics,
                    "seconds": cpu_s,
                }
            )
    return {
        "setup": {
            "tones": asdict(config),
            "mel": MEL.to_dict(),
            "train_tones": len(train_pool.factors),
            "eval_tones": len(eval_pool.factors),
            "eval_pairs": len(eval_pairs),
            "steps": steps,
            "batch_pairs": batch,
            "lr": lr,
            "seeds": seeds,
            "shared_dim": 8,
            "private_dim": 8,
            "combine": "poe",
            "estimator": estimator,
        },
        "runs": results,
        "findings": findings(results),
    }


# -- summary and report --------------------------------------------------------------------------

#: a change of separation (sum of two accuracy differences) counts only beyond this margin
SEPARATION_MARGIN = 0.05


def _by_variant(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        out.setdefault(r["variant"], []).append(r)
    return out


def _mean(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for r in runs:
        node: Any = r
        for key in path:
            node = node[key]
        values.append(float(node))
    return float(np.mean(values))


def findings(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seed's four claims, each checked on the means over seeds with the stated criterion."""
    runs = _by_variant(results)
    out: list[dict[str, Any]] = []
    with_gamma = [v for v, rs in runs.items() if rs[0]["weights"]["gamma"] > 0]
    if with_gamma:
        timbre = {
            v: (
                _mean(runs[v], "nmi_subspace", "timbre", "shared"),
                _mean(runs[v], "nmi_subspace", "timbre", "private"),
            )
            for v in with_gamma
        }
        freq = {
            v: (
                _mean(runs[v], "nmi_subspace", "frequency", "shared"),
                _mean(runs[v], "nmi_subspace", "frequency", "private"),
            )
            for v in with_gamma
        }
        out.append(
            {
                "claim": "timbre concentrates in the shared latent",
                "criterion": "NMI(timbre; shared) > NMI(timbre; private) for every variant with gamma > 0",
                "reproduced": all(s > p for s, p in timbre.values()),
                "evidence": {v: {"shared": s, "private": p} for v, (s, p) in timbre.items()},
            }
        )
        out.append(
            {
                "claim": "frequency concentrates in the private latents",
                "criterion": "NMI(frequency; private) > NMI(frequency; shared) "
                "for every variant with gamma > 0",
                "reproduced": all(p > s for s, p in freq.values()),
                "evidence": {v: {"shared": s, "private": p} for v, (s, p) in freq.items()},
            }
        )
    if "recon only" in runs:
        base = _mean(runs["recon only"], "separation")
        sep = {v: _mean(rs, "separation") for v, rs in runs.items()}
        gamma_only = [
            v
            for v, rs in runs.items()
            if rs[0]["weights"] == {"alpha": 0.0, "beta": 0.0, "gamma": rs[0]["weights"]["gamma"]}
            and rs[0]["weights"]["gamma"] > 0
        ]
        alpha_beta = [
            v
            for v, rs in runs.items()
            if rs[0]["weights"]["gamma"] == 0
            and (rs[0]["weights"]["alpha"] > 0 or rs[0]["weights"]["beta"] > 0)
        ]
        if gamma_only:
            out.append(
                {
                    "claim": "gamma > 0 improves private/shared separation",
                    "criterion": f"separation(gamma only) > separation(recon only) + {SEPARATION_MARGIN} "
                    "for every gamma",
                    "reproduced": all(sep[v] > base + SEPARATION_MARGIN for v in gamma_only),
                    "evidence": {"recon only": base, **{v: sep[v] for v in gamma_only}},
                }
            )
        if alpha_beta:
            out.append(
                {
                    "claim": "alpha and beta do not improve separation",
                    "criterion": "separation(alpha or beta only) <= separation(recon only) + "
                    f"{SEPARATION_MARGIN}",
                    "reproduced": all(sep[v] <= base + SEPARATION_MARGIN for v in alpha_beta),
                    "evidence": {"recon only": base, **{v: sep[v] for v in alpha_beta}},
                }
            )
    return out


def _pm(runs: list[dict[str, Any]], *path: str, pct: bool = False) -> str:
    values = []
    for r in runs:
        node: Any = r
        for key in path:
            node = node[key]
        values.append(float(node) * (100.0 if pct else 1.0))
    fmt = "{:.1f}" if pct else "{:.3f}"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(np.mean(values))} ± {fmt.format(np.std(values))}"


def markdown_report(report: dict[str, Any], command: str) -> str:
    setup, runs = report["setup"], _by_variant(report["runs"])
    n_seeds = len(setup["seeds"])
    lines = [
        "# MARL case study: shared vs private latents on synthetic tone pairs",
        "",
        f"Generated by `{command}` (CPU, one thread). Method, estimator and criteria: the module "
        "docstring of `csi_training.experiments.marl_case_study`, `csi_training.disentanglement` and "
        "`docs/recipes/marl.md`.",
        "",
        f"Setup: {setup['train_tones']} training tones and {setup['eval_pairs']} held-out pairs of "
        f"{setup['eval_tones']} other tones; {setup['steps']} steps of {setup['batch_pairs']} pairs, "
        f"Adam {setup['lr']:g}; 8-d shared latent (product of experts), 8-d private latent per view; "
        f"log q(z) estimator: {setup.get('estimator', 'weighted')}; "
        f"{n_seeds} seed(s) per variant" + (" (mean ± std over seeds)." if n_seeds > 1 else "."),
        "",
        "## Ablation: probes and separation",
        "",
        "MLP probe accuracy (%) on held-out pairs; timbre chance 25 %, pitch (8 half-octave classes) "
        "chance 12.5 %. separation = (timbre shared - timbre private) + (pitch private - pitch shared), "
        "as a fraction.",
        "",
        "| variant | alpha | beta | gamma | timbre: shared | timbre: private | timbre: both | pitch: shared "
        "| pitch: private | pitch: both | separation | recon (BCE) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in runs.items():
        w = rs[0]["weights"]
        lines.append(
            f"| {name} | {w['alpha']:g} | {w['beta']:g} | {w['gamma']:g} | "
            + " | ".join(
                _pm(rs, "probe", task, space, pct=True)
                for task in ("timbre", "pitch")
                for space in ("shared", "private", "both")
            )
            + f" | {_pm(rs, 'separation')} | {_pm(rs, 'train', 'recon')} |"
        )
    lines += [
        "",
        "## Mutual information: factors × latent subspaces",
        "",
        f"Normalised MI I(factor; subspace) / H(factor), subspace quantised by k-means ({SUBSPACE_CLUSTERS} "
        f"clusters), frequency in {MI_BINS} quantile bins of log f; Miller-Madow corrected.",
        "",
        "| variant | timbre; shared | timbre; private | frequency; shared | frequency; private |",
        "|---|---|---|---|---|",
    ]
    for name, rs in runs.items():
        lines.append(
            f"| {name} | "
            + " | ".join(
                _pm(rs, "nmi_subspace", f, s) for f in ("timbre", "frequency") for s in ("shared", "private")
            )
            + " |"
        )
    lines += [
        "",
        "## Mutual information per latent dimension",
        "",
        f"Normalised MI of each dimension ({MI_BINS} quantile bins), first seed; s0..s7 shared, p0..p7 "
        "private (view 1).",
        "",
    ]
    dims = [f"s{d}" for d in range(setup["shared_dim"])] + [f"p{d}" for d in range(setup["private_dim"])]
    lines += ["| variant | factor | " + " | ".join(dims) + " |", "|---|---|" + "---|" * len(dims)]
    for name, rs in runs.items():
        for factor in ("timbre", "frequency"):
            row = rs[0]["nmi_per_dim"][factor]
            lines.append(
                f"| {name} | {factor} | "
                + " | ".join(f"{v:.2f}" for v in row["shared"] + row["private"])
                + " |"
            )
    lines += ["", "## The seed's findings", ""]
    for f in report["findings"]:
        verdict = "reproduced" if f["reproduced"] else "NOT reproduced"
        evidence = "; ".join(
            f"{k}: "
            + (", ".join(f"{kk} {vv:.3f}" for kk, vv in v.items()) if isinstance(v, dict) else f"{v:.3f}")
            for k, v in f["evidence"].items()
        )
        lines.append(f"- **{f['claim']}**: {verdict} (criterion: {f['criterion']}; {evidence}).")
    lines += [
        "",
        "Training losses per subspace (mean of the last 10 % of steps) and all figures: "
        f"`{Path(report.get('json', 'marl.json')).name}`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/marl.md"), help="Markdown report")
    parser.add_argument("--json", type=Path, default=None, help="JSON figures (default: --out with .json)")
    parser.add_argument("--steps", type=int, default=1500, help="training steps per variant")
    parser.add_argument("--batch", type=int, default=128, help="pairs per batch")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one training run per seed")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--train-tones", type=int, default=2000, help="training tones per waveform type")
    parser.add_argument("--eval-tones", type=int, default=1000, help="held-out tones per waveform type")
    parser.add_argument("--eval-pairs", type=int, default=3000, help="held-out pairs evaluated")
    parser.add_argument(
        "--estimator",
        choices=["weighted", "chen"],
        default="weighted",
        help="minibatch estimate of log q(z) (csi_training.losses.tcvae)",
    )
    parser.add_argument(
        "--variants", nargs="+", default=None, help=f"subset of: {', '.join(repr(v[0]) for v in VARIANTS)}"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    variants = VARIANTS
    if args.variants:
        known = {v[0]: v for v in VARIANTS}
        unknown = [v for v in args.variants if v not in known]
        if unknown:
            parser.error(f"unknown variant(s) {unknown}; choose from {list(known)}")
        variants = tuple(known[v] for v in args.variants)
    if args.steps < 1 or args.batch < 2:
        parser.error("--steps must be >= 1 and --batch >= 2")
    if min(args.train_tones, args.eval_tones) < 2 or args.eval_pairs < 10:
        parser.error("--train-tones and --eval-tones must be >= 2, --eval-pairs >= 10")
    report = run(
        args.seeds,
        args.steps,
        args.batch,
        args.lr,
        variants,
        args.train_tones,
        args.eval_tones,
        args.eval_pairs,
        args.estimator,
    )
    json_path = args.json or args.out.with_suffix(".json")
    report["json"] = str(json_path)
    shown = argv if argv is not None else sys.argv[1:]
    command = "python -m csi_training.experiments.marl_case_study " + " ".join(shlex.quote(a) for a in shown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(report, indent=2, default=float) + "\n")
    atomic_write_text(args.out, markdown_report(report, command.strip()))
    logger.info("wrote %s and %s", args.out, json_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
