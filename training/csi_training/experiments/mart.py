"""MART recipe driver: pre-training, CSI fine-tuning, zero-shot probing and the evidence table.

    python -m csi_training.experiments.mart pretrain --config configs/mart_pretrain.yaml --out runs/mart
    python -m csi_training.experiments.mart finetune --init runs/mart/checkpoint \
        --train-manifest train.csv --test-manifest test.csv --out runs/mart_ft
    python -m csi_training.experiments.mart evidence --scale smoke \
        --train-manifest train.csv --test-manifest test.csv --out runs/mart_evidence \
        --doc docs/recipes/mart.md

Fine-tuning (the paper's CSI protocol): the pre-trained FCN-7 runs over windows of a track's
log-mel (the finest part length, half-overlapping) and the CQTNet-style backbone embeds that
sequence (:class:`~csi_training.models.mart.MartCQTNet`); everything is trained together with
semi-hard triplets + a classification head over P works x K versions batches, then evaluated on
unseen works (MAP, P@10, MR1). ``--init none`` trains the same network from scratch.

Zero-shot probe (our stand-in for the paper's linear-probing ablation, which needs tags we do not
have): track embedding = mean of the pre-trained encoder's whole-clip vectors over consecutive
whole clips, ranked by cosine on unseen works.

``evidence`` runs the four pre-training variants (MART, w/o PWT, w/o HCL, w/o both), probes each,
fine-tunes the MART encoder and the from-scratch baseline, writes ``evidence.json`` and the table
into the recipe's documentation between the ``mart-evidence`` markers. ``--scale smoke`` fits a
2-core CPU in minutes and says so in the table; ``--scale paper`` is the GPU-scale setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from csi_runtime.atomic import atomic_write_text
from csi_training.experiments.mart_pretrain import (
    INT16_SCALE,
    AudioClips,
    PretrainConfig,
    load_pretrain_checkpoint,
    load_tracks,
    pretrain,
    pretrain_config_from_dict,
)
from csi_training.frontends import MelConfig
from csi_training.frontends.hierarchical import HierarchyConfig, stft_logmel
from csi_training.models.fcn import FCN7
from csi_training.models.mart import MartCQTNet, MartPretrainModel

logger = logging.getLogger(__name__)

__all__ = ["FinetuneSettings", "finetune", "main", "probe", "run_evidence", "write_doc_table"]

DOC_BEGIN = "<!-- mart-evidence:begin -->"
DOC_END = "<!-- mart-evidence:end -->"

VARIANTS: dict[str, tuple[bool, bool]] = {  # name → (part-whole transformer, hierarchical loss)
    "MART": (True, True),
    "w/o PWT": (False, True),
    "w/o HCL": (True, False),
    "w/o PWT & HCL": (False, False),
}


@dataclass(frozen=True)
class FinetuneSettings:
    """CSI fine-tuning of MartCQTNet (see the module docstring)."""

    train_works: int | None = None  # None: all works of the training manifest
    clip_s: float = 20.0
    eval_max_s: float = 120.0
    works_per_batch: int = 16
    versions_per_work: int = 4
    steps: int = 20_000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    margin: float = 0.3
    ce_weight: float = 1.0
    embedding_dim: int = 256
    cqtnet_width: str = "small"
    seed: int = 0


#: the pre-training network of the CPU scales: FCN-7 at 1/8 width and a narrow transformer
CPU_PRETRAIN_MODEL = {
    "width": "tiny",
    "attn_dim": 48,
    "ffn_dim": 128,
    "projection_hidden": 128,
    "projection_dim": 64,
}

SCALES: dict[str, dict[str, Any]] = {
    # minutes on one CPU thread; numbers from it say that the pipeline runs, not how well MART works
    "smoke": {
        "pretrain": {
            "threads": 1,
            "model": CPU_PRETRAIN_MODEL,
            "data": {"max_files": 160, "max_s": 30.0, "val_files": 32},
            "optim": {"batch_size": 16, "steps": 25, "eval_every": 25},
        },
        "finetune": {
            "train_works": 80,
            "clip_s": 12.0,
            "eval_max_s": 30.0,
            "works_per_batch": 8,
            "steps": 30,
            "embedding_dim": 128,
        },
        "test_works": 100,
    },
    # about 1.5 hours on a 2-core CPU: the smoke model with 6x the pre-training and 8x the fine-tuning
    # steps; on the rendered corpus its CSI numbers are still at chance (docs/recipes/mart.md)
    "medium": {
        "pretrain": {
            "threads": 2,
            "model": CPU_PRETRAIN_MODEL,
            "data": {"max_files": 600, "max_s": 30.0, "val_files": 64},
            "optim": {"batch_size": 16, "steps": 150, "eval_every": 50},
        },
        "finetune": {
            "train_works": 300,
            "clip_s": 8.0,
            "eval_max_s": 30.0,
            "works_per_batch": 8,
            "steps": 250,
            "embedding_dim": 128,
        },
        "test_works": 100,
    },
    # the paper's settings (batch 48, Adam 3e-4 / 1e-6, FCN-7 full width); a GPU run
    "paper": {
        "pretrain": {
            "optim": {"batch_size": 48, "steps": 100_000, "eval_every": 1000},
            "data": {"max_s": 120.0},
        },
        "finetune": {"steps": 20_000},
        "test_works": None,
    },
}


# -- features ------------------------------------------------------------------------------------


def finetune_mel_config(h: HierarchyConfig) -> MelConfig:
    """The whole-track log-mel that MartCQTNet windows: the finest level's hop, same mel bands."""
    return MelConfig(
        sample_rate=h.sample_rate,
        n_fft=h.n_fft,
        hop_length=h.finest_hop,
        n_mels=h.n_mels,
        fmin=h.fmin,
        fmax=h.fmax,
        log=h.log,
        amin=h.amin,
        center=True,
    )


@dataclass
class TrackFeatures:
    features: list[np.ndarray]  # float16 [n_mels, T_i]
    work_ids: list[str]


def _entries(manifest: str, max_works: int | None, seed: int) -> list[Any]:
    from csi_training.data import read_manifest

    entries = read_manifest(manifest)
    if max_works is None:
        return entries
    works = sorted({e.work_id for e in entries})
    keep = set(np.random.default_rng([seed, 0x3071]).permutation(works)[:max_works].tolist())
    return [e for e in entries if e.work_id in keep]


@torch.no_grad()
def track_features(entries: Sequence[Any], h: HierarchyConfig, max_s: float) -> TrackFeatures:
    """Whole-track log-mel of each usable entry (unusable files skipped with a warning)."""
    from csi_training.data import AudioError, load_audio

    mel = finetune_mel_config(h)
    out = TrackFeatures([], [])
    for e in entries:
        try:
            audio = load_audio(str(e.path), h.sample_rate, max_duration_s=max_s)
        except (AudioError, OSError, ValueError) as exc:
            logger.warning("skipping %s: %s", e.path, exc)
            continue
        feats = stft_logmel(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None], mel)[0]
        out.features.append(feats.numpy().astype(np.float16))
        out.work_ids.append(e.work_id)
    return out


def _metrics(emb: np.ndarray, work_ids: Sequence[str]) -> dict[str, float]:
    from csi_training.metrics import evaluate

    result = evaluate(emb, list(work_ids))
    return {k: float(result[k]) for k in ("MAP", "P@10", "MR1", "MRR") if k in result}


def chance_metrics(work_ids: Sequence[str], dim: int, draws: int = 5, seed: int = 0) -> dict[str, float]:
    """Mean metrics of random unit vectors [n, dim] over `draws` draws: the table's chance level."""
    rng = np.random.default_rng([seed, 0xC4A0])
    runs = []
    for _ in range(draws):
        v = rng.standard_normal((len(work_ids), dim)).astype(np.float32)
        runs.append(_metrics(v / np.linalg.norm(v, axis=1, keepdims=True), work_ids))
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


# -- zero-shot probe -----------------------------------------------------------------------------


@torch.no_grad()
def probe(model: MartPretrainModel, clips: AudioClips, work_ids: Sequence[str]) -> dict[str, float]:
    """Retrieval metrics of mean whole-clip encoder vectors over consecutive whole clips of each track."""
    length = model.config.hierarchy.whole_samples
    vectors = []
    for track in clips.tracks:
        n = max(1, len(track) // length)
        x = np.zeros(n * length, dtype=np.float32)
        x[: min(len(track), n * length)] = track[: n * length] / INT16_SCALE
        v = model.embed_whole(torch.from_numpy(x.reshape(n, length))).mean(0)
        vectors.append(torch.nn.functional.normalize(v, dim=0).numpy())
    return _metrics(np.stack(vectors), work_ids)


# -- fine-tuning ---------------------------------------------------------------------------------


def finetune(
    encoder: FCN7,
    hierarchy: HierarchyConfig,
    train: TrackFeatures,
    test: TrackFeatures,
    settings: FinetuneSettings,
) -> dict[str, Any]:
    """Train MartCQTNet (encoder in front of CQTNet) on `train`, evaluate on `test` (unseen works)."""
    from csi_training.augment import crop
    from csi_training.batching import CliqueBatchSampler
    from csi_training.datasets import embed_features
    from csi_training.losses import ClassificationHead, TripletLoss

    torch.manual_seed(settings.seed)
    net = MartCQTNet(
        encoder,
        hierarchy.frames,
        max(1, hierarchy.frames // 2),
        settings.embedding_dim,
        settings.cqtnet_width,
    )
    labels = {w: i for i, w in enumerate(sorted(set(train.work_ids)))}
    y = np.array([labels[w] for w in train.work_ids])
    items: dict[int, list[int]] = {}
    for i, label in enumerate(y):
        items.setdefault(int(label), []).append(i)
    sampler = CliqueBatchSampler(
        items,
        settings.works_per_batch,
        settings.versions_per_work,
        seed=settings.seed,
        steps_per_epoch=settings.steps,
    )
    head = ClassificationHead(settings.embedding_dim, len(labels), label_smoothing=0.1)
    triplet = TripletLoss(margin=settings.margin, mining="semi_hard", metric="euclidean")
    params = list(net.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    frame_rate = hierarchy.sample_rate / hierarchy.finest_hop
    clip_frames = max(hierarchy.frames, round(settings.clip_s * frame_rate))
    rng = np.random.default_rng([settings.seed, 0xF1])
    net.train()
    t0, losses = time.monotonic(), []
    for step, batch in enumerate(sampler, start=1):
        x = torch.from_numpy(np.stack([crop(train.features[i], clip_frames, rng) for i in batch]))
        target = torch.from_numpy(y[batch])
        raw = net.forward_unnormalized(x)
        trip, _ = triplet(nn.functional.normalize(raw, dim=-1), target)
        ce, _ = head(raw, target)
        loss = trip + settings.ce_weight * ce
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0:
            logger.info("fine-tune step %d/%d: loss %.4f", step, settings.steps, float(np.mean(losses[-10:])))
    seconds = time.monotonic() - t0
    max_frames = round(settings.eval_max_s * frame_rate)
    emb = embed_features(net, test.features, torch.device("cpu"), max_frames=max_frames)
    return {
        "test": _metrics(emb, test.work_ids),
        "final_loss": float(np.mean(losses[-10:])) if losses else None,
        "seconds_per_step": seconds / max(1, len(losses)),
        "train_tracks": len(train.features),
        "train_works": len(labels),
        "test_tracks": len(test.features),
        "test_works": len(set(test.work_ids)),
    }


# -- evidence ------------------------------------------------------------------------------------


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def run_evidence(
    scale: str,
    train_manifest: str,
    test_manifest: str,
    out_dir: str | Path,
    base: dict[str, Any] | None = None,
    doc: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The four pre-training variants + probes, fine-tuned MART vs scratch; writes evidence.json (+ doc)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    preset = SCALES[scale]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_dict = _merge(base or {}, preset["pretrain"])
    base_dict = _merge(base_dict, {"seed": seed, "data": {"manifest": train_manifest}})
    results: dict[str, Any] = {"scale": scale, "variants": {}, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    test_entries = _entries(test_manifest, preset["test_works"], seed)
    template = pretrain_config_from_dict(base_dict)
    h = template.model.hierarchy
    test_clips = load_tracks([str(e.path) for e in test_entries], h.sample_rate, 120.0)
    test_ids = [e.work_id for e in test_entries if str(e.path) in set(test_clips.paths)]
    mart_encoder: FCN7 | None = None
    for name, (pwt, hcl) in VARIANTS.items():
        variant = _merge(base_dict, {"model": {"part_whole_transformer": pwt, "hierarchical_loss": hcl}})
        config = pretrain_config_from_dict(variant)
        folder = out / name.replace("/", "").replace(" & ", "_").replace(" ", "_").lower()
        t0 = time.monotonic()
        if not (folder / "checkpoint").exists():
            pretrain(config, folder)
        model, _, metrics = load_pretrain_checkpoint(folder / "checkpoint")
        results["variants"][name] = {
            "probe": probe(model, test_clips, test_ids),
            "pretrain_val": metrics.get("current", {}).get("val", {}),
            "pretrain_minutes": (time.monotonic() - t0) / 60.0,
        }
        logger.info("%s: %s", name, results["variants"][name])
        if name == "MART":
            mart_encoder = model.encoder
    ft_settings = FinetuneSettings(**{**preset["finetune"], "seed": seed})
    train_feats = track_features(
        _entries(train_manifest, ft_settings.train_works, seed), h, ft_settings.eval_max_s
    )
    test_feats = track_features(test_entries, h, ft_settings.eval_max_s)
    assert mart_encoder is not None
    torch.manual_seed(seed)
    scratch = FCN7(h.n_mels, template.model.width)
    results["finetune"] = {
        "MART (pre-trained encoder)": finetune(mart_encoder.train(), h, train_feats, test_feats, ft_settings),
        "from scratch": finetune(scratch, h, train_feats, test_feats, ft_settings),
    }
    results["chance"] = chance_metrics(test_feats.work_ids, ft_settings.embedding_dim, seed=seed)
    results["settings"] = {"pretrain": template.to_dict(), "finetune": dataclasses.asdict(ft_settings)}
    atomic_write_text(out / "evidence.json", json.dumps(results, indent=2, default=float) + "\n")
    if doc is not None:
        write_doc_table(
            doc, results, command=" ".join(["python -m csi_training.experiments.mart", *sys.argv[1:]])
        )
    return results


def _fmt(m: dict[str, float]) -> str:
    nan = float("nan")
    return f"{m.get('MAP', nan):.3f} | {m.get('P@10', nan):.3f} | {m.get('MR1', nan):.1f}"


def evidence_table(results: dict[str, Any], command: str = "") -> str:
    """Markdown table of an evidence run."""
    ft = results["finetune"]
    any_ft = next(iter(ft.values()))
    notes = {
        "smoke": " — a CPU smoke run: it shows the pipeline end to end, not MART's quality.",
        "medium": " — a CPU run of about 1.5 hours (tiny FCN-7, hundreds of steps): early training, not"
        " the paper's scale.",
    }
    chance = results.get("chance")
    chance_row = [f"| random unit vectors (chance, mean of 5 draws) | {_fmt(chance)} | |"] if chance else []
    lines = [
        f"Scale: **{results['scale']}**" + notes.get(results["scale"], ""),
        f"Test: {any_ft['test_tracks']} tracks of {any_ft['test_works']} works never seen in training"
        f"; fine-tuning on {any_ft['train_works']} works ({any_ft['train_tracks']} tracks).",
        "",
        "| CSI fine-tuning | MAP | P@10 | MR1 | s/step |",
        "|---|---|---|---|---|",
    ]
    for name, r in ft.items():
        lines.append(f"| {name} | {_fmt(r['test'])} | {r['seconds_per_step']:.2f} |")
    lines += chance_row
    lines += [
        "",
        "| Pre-training ablation (zero-shot probe) | MAP | P@10 | MR1 | val view accuracy |",
        "|---|---|---|---|---|",
    ]
    for name, r in results["variants"].items():
        acc = r["pretrain_val"].get("accuracy", float("nan"))
        lines.append(f"| {name} | {_fmt(r['probe'])} | {acc:.3f} |")
    lines += chance_row
    if command:
        lines += ["", f"Command: `{command}` (started {results.get('started', '?')})."]
    return "\n".join(lines)


def write_doc_table(doc: str | Path, results: dict[str, Any], command: str = "") -> None:
    """Replace the text between the mart-evidence markers of `doc` (appended if absent)."""
    path = Path(doc)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{DOC_BEGIN}\n{evidence_table(results, command)}\n{DOC_END}"
    if DOC_BEGIN in text and DOC_END in text:
        head, rest = text.split(DOC_BEGIN, 1)
        tail = rest.split(DOC_END, 1)[1]
        text = head + block + tail
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + block + "\n"
    atomic_write_text(path, text)


# -- CLI -----------------------------------------------------------------------------------------


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def _load_yaml(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: the top level must be a mapping")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m csi_training.experiments.mart", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="self-supervised pre-training on a manifest's audio")
    p.add_argument("--config", help="YAML pre-training config (configs/mart_pretrain.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    f = sub.add_parser("finetune", help="CSI fine-tuning of a pre-trained encoder (or from scratch)")
    f.add_argument("--init", required=True, help="pre-training checkpoint folder, or 'none' (scratch)")
    f.add_argument("--config", help="pre-training YAML (for the model shape when --init none)")
    f.add_argument("--train-manifest", required=True)
    f.add_argument("--test-manifest", required=True)
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="FinetuneSettings field")
    f.add_argument("--out", required=True)
    e = sub.add_parser("evidence", help="ablation + fine-tuning table (writes the recipe doc)")
    e.add_argument("--scale", choices=sorted(SCALES), default="smoke")
    e.add_argument("--config", help="base pre-training YAML the scale preset is applied on")
    e.add_argument("--train-manifest", required=True)
    e.add_argument("--test-manifest", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--doc", help="markdown file whose mart-evidence block is (re)written")
    e.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.command == "pretrain":
        config = pretrain_config_from_dict(_merge(_load_yaml(args.config), _parse_set(args.set)))
        result = pretrain(config, args.out, resume=args.resume)
        print(json.dumps(result["history"][-1] if result["history"] else {}, indent=2))
        return 0
    if args.command == "finetune":
        overrides = _parse_set(args.set)
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(FinetuneSettings)})
        if unknown:
            raise SystemExit(
                f"unknown fine-tuning setting(s) {', '.join(unknown)}; allowed: "
                + ", ".join(f.name for f in dataclasses.fields(FinetuneSettings))
            )
        settings = FinetuneSettings(**overrides)
        if args.init == "none":
            base: PretrainConfig = pretrain_config_from_dict(_load_yaml(args.config))
            encoder = FCN7(base.model.hierarchy.n_mels, base.model.width)
        else:
            model, base, _ = load_pretrain_checkpoint(args.init)
            encoder = model.encoder.train()
        h = base.model.hierarchy
        train = track_features(
            _entries(args.train_manifest, settings.train_works, settings.seed), h, settings.eval_max_s
        )
        test = track_features(_entries(args.test_manifest, None, settings.seed), h, settings.eval_max_s)
        result = finetune(encoder, h, train, test, settings)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out) / "finetune.json", json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["test"], indent=2))
        return 0
    result = run_evidence(
        args.scale,
        args.train_manifest,
        args.test_manifest,
        args.out,
        _load_yaml(args.config),
        args.doc,
        args.seed,
    )
    print(evidence_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
