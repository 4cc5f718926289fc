"""MART self-supervised pre-training on unlabelled audio (labels in the manifest are ignored).

    python -m csi_training.experiments.mart pretrain --config configs/mart_pretrain.yaml \
        --set data.manifest=/data/train_manifest.csv --out runs/mart_pretrain

Each step draws ``batch_size`` tracks, two random whole clips of each (the two views), applies the
CLMR chain to each view independently, and minimises the hierarchical contrastive loss of
:class:`~csi_training.models.mart.MartPretrainModel` with Adam (paper: lr 3e-4, weight decay 1e-6,
batch 48). Every ``eval_every`` steps the loss and the view-retrieval accuracy on held-out files
(fixed crops, no augmentation) are logged to ``history.jsonl`` and a checkpoint folder is written
atomically: ``model.safetensors`` (all weights), ``config.json`` (format tag, the config),
``metrics.json``, and ``train_state.pt`` (optimizer + RNG, torch.load(weights_only=True)) for
``--resume``.

Audio is decoded once into memory as int16 (about 1 MB per 30 s at 16 kHz); ``data.max_files``
bounds it. Files that cannot be decoded, are silent or hold NaN are skipped with a warning; tracks
shorter than a whole clip are zero-padded at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from csi_runtime.atomic import atomic_dir, atomic_write_text
from csi_training.clmr_augment import ClmrAugment, ClmrConfig
from csi_training.losses.hierarchical import hierarchical_contrastive_loss
from csi_training.models.mart import MartConfig, MartPretrainModel

logger = logging.getLogger(__name__)

__all__ = [
    "INT16_SCALE",
    "PRETRAIN_FORMAT",
    "AudioClips",
    "PretrainConfig",
    "load_pretrain_checkpoint",
    "load_tracks",
    "pretrain",
    "pretrain_config_from_dict",
]

PRETRAIN_FORMAT = "csi-mart-pretrain"
PRETRAIN_RECIPE = "mart_pretrain"  # ``recipe:`` of a pre-training config: ``csi train`` runs it here
PRETRAIN_FORMAT_VERSION = 1
INT16_SCALE = 32767.0


@dataclass(frozen=True)
class PretrainData:
    manifest: str = ""
    max_files: int | None = None  # None: every file of the manifest
    max_s: float = 60.0  # seconds decoded per file
    val_files: int = 32  # held out (by a seeded shuffle) for the validation loss / accuracy


@dataclass(frozen=True)
class PretrainOptim:
    lr: float = 3e-4
    weight_decay: float = 1e-6
    batch_size: int = 48
    steps: int = 100_000
    eval_every: int = 500
    grad_clip: float = 5.0


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    model: MartConfig = field(default_factory=MartConfig)
    augment: ClmrConfig = field(default_factory=ClmrConfig)
    data: PretrainData = field(default_factory=PretrainData)
    optim: PretrainOptim = field(default_factory=PretrainOptim)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "threads": self.threads,
            "device": self.device,
            "model": self.model.to_dict(),
            "augment": self.augment.to_dict(),
            "data": dataclasses.asdict(self.data),
            "optim": dataclasses.asdict(self.optim),
        }


def _plain(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; allowed: {sorted(names)}"
        )
    return cls(**data)


def pretrain_config_from_dict(data: dict[str, Any]) -> PretrainConfig:
    """Validate a nested dict (PretrainConfig.to_dict, a YAML file); unknown keys are errors."""
    allowed = {"recipe", "seed", "threads", "device", "model", "augment", "data", "optim"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"unknown top-level key(s) {', '.join(unknown)}; allowed: {sorted(allowed)}")
    if data.get("recipe", PRETRAIN_RECIPE) != PRETRAIN_RECIPE:
        raise ValueError(
            f"recipe {data['recipe']!r} is not a pre-training recipe (expected {PRETRAIN_RECIPE!r})"
        )
    config = PretrainConfig(
        seed=int(data.get("seed", 0)),
        threads=data.get("threads"),
        device=str(data.get("device", "cpu")),
        model=MartConfig.from_dict(dict(data.get("model", {}))),
        augment=ClmrConfig.from_dict(dict(data.get("augment", {}))),
        data=_plain(PretrainData, dict(data.get("data", {})), "data"),
        optim=_plain(PretrainOptim, dict(data.get("optim", {})), "optim"),
    )
    if config.optim.batch_size < 2:
        raise ValueError("optim.batch_size must be >= 2 (in-batch negatives)")
    if config.optim.steps < 1 or config.optim.eval_every < 1:
        raise ValueError("optim.steps and optim.eval_every must be >= 1")
    return config


# -- audio ---------------------------------------------------------------------------------------


@dataclass
class AudioClips:
    """Decoded tracks (int16 [n] each, at sample_rate) and random whole-clip crops of them."""

    tracks: list[np.ndarray]
    paths: list[str]
    sample_rate: int

    def crop(self, index: int, length: int, rng: np.random.Generator | None) -> np.ndarray:
        """float32 [length] from track `index` (random start; rng None: centred)."""
        track = self.tracks[index]
        if len(track) < length:
            track = np.pad(track, (0, length - len(track)))
        span = len(track) - length
        start = (span // 2) if rng is None else int(rng.integers(0, span + 1))
        return track[start : start + length].astype(np.float32) / INT16_SCALE


def load_tracks(paths: list[str], sample_rate: int, max_s: float) -> AudioClips:
    """Decode files (skipping the unusable ones with a warning) into int16 tracks."""
    from csi_training.data import AudioError, load_audio

    tracks, kept = [], []
    for path in paths:
        try:
            audio = load_audio(path, sample_rate, max_duration_s=max_s)
        except (AudioError, OSError, ValueError) as exc:
            logger.warning("skipping %s: %s", path, exc)
            continue
        peak = float(np.max(np.abs(audio)))
        scale = INT16_SCALE / peak if peak > 1.0 else INT16_SCALE  # keep clipping out of the int16 copy
        tracks.append(np.round(audio * scale).astype(np.int16))
        kept.append(path)
    if not tracks:
        raise ValueError(f"none of the {len(paths)} audio files could be used")
    return AudioClips(tracks, kept, sample_rate)


def _split_files(config: PretrainConfig) -> tuple[list[str], list[str]]:
    from csi_training.data import read_manifest

    if not config.data.manifest:
        raise ValueError("data.manifest is required (a CSV with a path column; labels are ignored)")
    paths = [str(e.path) for e in read_manifest(config.data.manifest)]
    rng = np.random.default_rng([config.seed, 0xA0D10])
    order = rng.permutation(len(paths))
    n_val = min(config.data.val_files, max(0, len(paths) - config.optim.batch_size))
    val = [paths[i] for i in order[:n_val]]
    train = [paths[i] for i in order[n_val:]]
    if config.data.max_files is not None:
        train = train[: config.data.max_files]
    if len(train) < 2:
        raise ValueError(f"pre-training needs at least 2 training files, the manifest gives {len(train)}")
    return train, val


# -- checkpoints ---------------------------------------------------------------------------------


def _save(
    out: Path,
    model: MartPretrainModel,
    config: PretrainConfig,
    metrics: dict[str, Any],
    state: dict[str, Any],
) -> None:
    with atomic_dir(out / "checkpoint") as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": PRETRAIN_FORMAT})
        header = {
            "format": PRETRAIN_FORMAT,
            "format_version": PRETRAIN_FORMAT_VERSION,
            "config": config.to_dict(),
        }
        atomic_write_text(tmp / "config.json", json.dumps(header, indent=2) + "\n")
        atomic_write_text(tmp / "metrics.json", json.dumps(metrics, indent=2, default=float) + "\n")
        torch.save(state, tmp / "train_state.pt")


def load_pretrain_checkpoint(
    directory: str | Path,
) -> tuple[MartPretrainModel, PretrainConfig, dict[str, Any]]:
    """(model in eval mode, its config, metrics) of a pre-training checkpoint folder."""
    directory = Path(directory)
    try:
        header = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{directory} is not a MART pre-training checkpoint (no config.json)") from None
    if header.get("format") != PRETRAIN_FORMAT or header.get("format_version") != PRETRAIN_FORMAT_VERSION:
        raise ValueError(
            f"{directory}: format {header.get('format')!r} v{header.get('format_version')}, "
            f"expected {PRETRAIN_FORMAT!r} v{PRETRAIN_FORMAT_VERSION}"
        )
    config = pretrain_config_from_dict(header["config"])
    model = MartPretrainModel(config.model)
    weights = load_file(str(directory / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{directory}: weights do not fit the config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    metrics_file = directory / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return model.eval(), config, metrics


# -- the loop ------------------------------------------------------------------------------------


def _views(
    clips: AudioClips,
    indices: np.ndarray,
    length: int,
    augment: ClmrAugment | None,
    rng: np.random.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if rng is None:  # validation: two fixed, different crops (start and end of the track), no augmentation
        a = [clips.tracks[i][:length] for i in indices]
        b = [clips.tracks[i][-length:] for i in indices]
        pad = [np.pad(x, (0, length - len(x))).astype(np.float32) / INT16_SCALE for x in a + b]
        both = torch.from_numpy(np.stack(pad))
        return both[: len(indices)], both[len(indices) :]
    view_a = torch.from_numpy(np.stack([clips.crop(int(i), length, rng) for i in indices]))
    view_b = torch.from_numpy(np.stack([clips.crop(int(i), length, rng) for i in indices]))
    if augment is not None:
        view_a, view_b = augment(view_a, rng), augment(view_b, rng)
    return view_a, view_b


@torch.no_grad()
def _validate(
    model: MartPretrainModel, clips: AudioClips, config: PretrainConfig, device: torch.device
) -> dict[str, float]:
    n = len(clips.tracks)
    if n < 2:
        return {}
    model.eval()
    c = config.model
    length = c.hierarchy.whole_samples
    loss_sum, acc_sum, total = 0.0, 0.0, 0
    batch = config.optim.batch_size
    for start in range(0, n, batch):
        idx = np.arange(start, min(n, start + batch))
        if len(idx) < 2:  # a last batch of one has no negatives
            break
        a, b = _views(clips, idx, length, None, None)
        z_hat, z_tilde = model(a.to(device), b.to(device))
        loss, stats = hierarchical_contrastive_loss(
            z_hat, z_tilde, c.hierarchy.hierarchy, c.temperature, part_whole=c.hierarchical_loss
        )
        loss_sum += float(loss) * len(idx)
        acc_sum += stats["accuracy"] * len(idx)
        total += len(idx)
    model.train()
    return {"loss": loss_sum / total, "accuracy": acc_sum / total}


def pretrain(config: PretrainConfig, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a pre-training config; returns the final metrics."""
    out = Path(out_dir)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    train_paths, val_paths = _split_files(config)
    sr = config.model.hierarchy.sample_rate
    logger.info("decoding %d training and %d validation files", len(train_paths), len(val_paths))
    train_clips = load_tracks(train_paths, sr, config.data.max_s)
    val_clips = load_tracks(val_paths, sr, config.data.max_s) if val_paths else AudioClips([], [], sr)
    model = MartPretrainModel(config.model).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    augment = ClmrAugment(config.augment, sr)
    rng = np.random.default_rng([config.seed, 0x5EED])
    step, history = 0, []
    if resume:
        state_file = out / "checkpoint" / "train_state.pt"
        if not state_file.exists():
            raise FileNotFoundError(f"nothing to resume: {state_file} does not exist")
        loaded, saved_config, metrics = load_pretrain_checkpoint(out / "checkpoint")
        if saved_config.model != config.model:
            raise ValueError("cannot resume: the checkpoint's model section differs from this config")
        model.load_state_dict(loaded.state_dict())
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
        history = list(metrics.get("history", []))
        logger.info("resuming %s at step %d", out, step)
    elif (out / "checkpoint").exists():
        raise FileExistsError(
            f"{out} already holds a pre-training run; pass --resume or choose another folder"
        )
    c = config.model
    length = c.hierarchy.whole_samples
    model.train()
    sums, t0 = {"loss": 0.0, "accuracy": 0.0}, time.monotonic()
    n_since = 0
    while step < config.optim.steps:
        idx = rng.choice(
            len(train_clips.tracks),
            size=config.optim.batch_size,
            replace=len(train_clips.tracks) < config.optim.batch_size,
        )
        a, b = _views(train_clips, idx, length, augment, rng)
        z_hat, z_tilde = model(a.to(device), b.to(device))
        loss, stats = hierarchical_contrastive_loss(
            z_hat, z_tilde, c.hierarchy.hierarchy, c.temperature, part_whole=c.hierarchical_loss
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        step += 1
        n_since += 1
        sums["loss"] += float(loss.detach())
        sums["accuracy"] += stats["accuracy"]
        if step % config.optim.eval_every == 0 or step == config.optim.steps:
            record = {
                "step": step,
                "train": {k: v / n_since for k, v in sums.items()},
                "val": _validate(model, val_clips, config, device),
                "seconds_per_step": (time.monotonic() - t0) / n_since,
            }
            history.append(record)
            logger.info("step %d: train %s, val %s", step, record["train"], record["val"])
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "history.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            state = {
                "optimizer": optimizer.state_dict(),
                "step": step,
                "numpy_rng": json.dumps(rng.bit_generator.state),
                "torch_rng": torch.get_rng_state(),
            }
            _save(out, model, config, {"current": record, "history": history}, state)
            sums, t0, n_since = {"loss": 0.0, "accuracy": 0.0}, time.monotonic(), 0
    return {"history": history, "train_files": len(train_clips.tracks), "val_files": len(val_clips.tracks)}
