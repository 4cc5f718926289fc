"""Training checkpoints: a folder with ``model.safetensors``, ``config.json`` and ``metrics.json``.

- ``model.safetensors``: the backbone weights (keys ``backbone.*``); the frontend has no trained
  weights and is rebuilt from the pinned frontend config.
- ``config.json``: format tag and version, the full training config, the resolved frontend config,
  the training position (epoch, step), library versions.
- ``metrics.json``: validation metrics of this checkpoint and the history of the run.
- ``train_state.pt`` (``last`` only): optimizer, scheduler and RNG state for ``--resume``, loaded
  with ``torch.load(weights_only=True)`` (tensors and plain containers only, no pickle of objects).

A checkpoint folder is written to a temporary sibling and renamed into place, so a crash never
leaves a half-written checkpoint and the previous one survives until the new one is complete.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from csi_runtime.atomic import atomic_dir, atomic_write_text
from csi_training.config import TrainConfig, config_diff, config_from_dict, config_to_dict
from csi_training.models.encoder import Encoder, build_encoder

logger = logging.getLogger(__name__)

FORMAT = "csi-checkpoint"
FORMAT_VERSION = 1
#: config keys that may change between a checkpoint and a resumed run without changing the model
RESUMABLE_CHANGES = (
    "optim.epochs",
    "out_dir",
    "device",
    "amp",
    "threads",
    "init_from",
    "data.num_workers",
    "data.cache_dir",
)

__all__ = [
    "WRITTEN_HEADER_KEYS",
    "Checkpoint",
    "CheckpointError",
    "check_resumable",
    "init_backbone",
    "init_from_mart_pretrain",
    "load_backbone_weights",
    "load_checkpoint",
    "save_checkpoint",
]


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, damaged or incompatible with the requested config."""


@dataclass
class Checkpoint:
    path: Path
    config: TrainConfig
    encoder: Encoder
    info: dict[str, Any]
    metrics: dict[str, Any]


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


#: header keys save_checkpoint writes itself: a tool deriving one checkpoint from another (csi whiten,
#: csi pooling) carries over every other key of the source's header
WRITTEN_HEADER_KEYS: tuple[str, ...] = (
    "format",
    "format_version",
    "config",
    "frontend",
    "embedding_dim",
    "sample_rate",
    "torch_version",
)


def save_checkpoint(
    directory: str | Path,
    encoder: Encoder,
    config: TrainConfig,
    info: dict[str, Any],
    metrics: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (replacing an existing one only once complete)."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        weights = {
            f"backbone.{k}": v.detach().cpu().contiguous() for k, v in encoder.backbone.state_dict().items()
        }
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": config_to_dict(config),
            "frontend": encoder.frontend.config.to_dict(),
            "embedding_dim": encoder.backbone.embedding_dim,
            "sample_rate": encoder.sample_rate,
            "torch_version": torch.__version__,
            **info,
        }
        _write_json(tmp / "config.json", header)
        _write_json(tmp / "metrics.json", metrics)
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
    return directory


def read_header(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint folder, validated for format and version."""
    directory = Path(directory)
    file = directory / "config.json"
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist or is not a folder")
    try:
        header = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {directory} has no config.json") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {file} is unreadable: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a csi training checkpoint (format tag missing)")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {directory} has format version {version}; this csi_training reads version "
            f"{FORMAT_VERSION}"
        )
    for key in ("config", "frontend"):
        if not isinstance(header.get(key), dict):
            raise CheckpointError(f"checkpoint {file} lacks the {key!r} section")
    return header


def _load_weights(
    weights_file: Path, missing_message: str, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; CheckpointError (``missing_message`` when it is absent)."""
    try:
        return load_file(str(weights_file), device=str(map_location))
    except FileNotFoundError:
        raise CheckpointError(missing_message) from None
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{weights_file} is damaged or not a safetensors file: {exc}") from exc


def _mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], prefix: str = "") -> str:
    """What keeps ``found`` from loading into a module whose state dict is ``expected``: missing,
    unexpected and wrongly shaped tensors (at most 8 named each, shown with ``prefix``); "" if none."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(found) if expected[k].shape != found[k].shape)

    def names(keys: list[str]) -> str:
        return ", ".join(prefix + k for k in keys[:8]) + (" …" if len(keys) > 8 else "")

    parts = []
    if missing:
        parts.append(f"missing {names(missing)}")
    if unexpected:
        parts.append(f"unexpected {names(unexpected)}")
    if wrong_shape:
        parts.append(
            "wrong shape "
            + ", ".join(
                f"{prefix}{k} {tuple(found[k].shape)}≠{tuple(expected[k].shape)}" for k in wrong_shape[:8]
            )
        )
    return "; ".join(parts)


def load_backbone_weights(
    directory: str | Path, backbone: torch.nn.Module, map_location: str | torch.device = "cpu"
) -> None:
    """Load a checkpoint's ``model.safetensors`` into ``backbone``; missing, unexpected or
    wrongly shaped weights are refused with their names."""
    directory = Path(directory)
    weights_file = directory / "model.safetensors"
    weights = _load_weights(weights_file, f"checkpoint {directory} has no model.safetensors", map_location)
    expected = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    problems = _mismatch(expected, weights)
    if problems:
        raise CheckpointError(
            f"weights in {weights_file} do not fit the model its config describes: {problems}"
        )
    backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in weights.items()})


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the encoder of a checkpoint folder; mismatched weights are refused with their names."""
    directory = Path(directory)
    header = read_header(directory)
    try:
        config = config_from_dict(header["config"])
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {directory} holds an invalid config: {exc}") from exc
    encoder = build_encoder(header["frontend"], config.model)
    load_backbone_weights(directory, encoder.backbone, map_location)
    encoder.eval()
    metrics_file = directory / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return Checkpoint(path=directory, config=config, encoder=encoder, info=header, metrics=metrics)


def check_resumable(header: dict[str, Any], config: TrainConfig) -> None:
    """Refuse to resume from a checkpoint whose config differs in anything but RESUMABLE_CHANGES.

    The checkpoint's config is read through :func:`config_from_dict` first, so a section added to
    the config after the checkpoint was written (e.g. ``discover``) counts with its defaults.
    """
    try:
        theirs = config_to_dict(config_from_dict(header["config"]))
    except ValueError as exc:
        raise CheckpointError(f"cannot resume: the checkpoint holds an invalid config: {exc}") from exc
    differing = [
        key
        for key in config_diff(theirs, config_to_dict(config))
        if not any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE_CHANGES)
    ]
    if differing:
        raise CheckpointError(
            "cannot resume: the checkpoint was trained with a different config; differing keys: "
            + ", ".join(differing)
        )


#: model keys that say how track vectors are formed, not what the weights mean
_NOT_WEIGHTS = ("model.track_window_s", "model.track_hop_s")


def init_backbone(directory: str | Path, backbone: torch.nn.Module, config: TrainConfig) -> dict[str, Any]:
    """Start ``backbone`` from the weights of checkpoint ``directory`` (fine-tuning); returns its header.

    ``directory`` is a training checkpoint (all backbone weights; refused, with the differing keys
    named, when its frontend or model section differs from ``config``'s: the weights would then mean
    something else) or, for ``model.name: mart``, a MART pre-training checkpoint (see
    :func:`init_from_mart_pretrain`).
    """
    directory = Path(directory)
    if _format_tag(directory) == _mart_pretrain_format():
        return init_from_mart_pretrain(directory, backbone, config)
    header = read_header(directory)
    try:  # through config_from_dict: keys added to the config since count with their defaults
        theirs = config_to_dict(config_from_dict(header["config"]))
    except ValueError as exc:
        raise CheckpointError(f"cannot start from {directory}: it holds an invalid config: {exc}") from exc
    ours = config_to_dict(config)
    differing = [
        key
        for key in config_diff(theirs, ours)
        if (key == "frontend" or key.startswith(("frontend.", "model."))) and key not in _NOT_WEIGHTS
    ]
    if differing:
        raise CheckpointError(
            f"cannot start from {directory}: its frontend/model config differs in " + ", ".join(differing)
        )
    load_backbone_weights(directory, backbone)
    return header


def _format_tag(directory: Path) -> Any:
    """The ``format`` field of ``directory/config.json`` (None when unreadable: read_header says why)."""
    try:
        header = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return header.get("format") if isinstance(header, dict) else None


def _mart_pretrain_format() -> str:
    from csi_training.experiments.mart_pretrain import PRETRAIN_FORMAT

    return PRETRAIN_FORMAT


def init_from_mart_pretrain(
    directory: str | Path, backbone: torch.nn.Module, config: TrainConfig
) -> dict[str, Any]:
    """Load the FCN-7 projection encoder of a MART pre-training checkpoint (its ``encoder.*`` weights)
    into the front of a ``mart`` backbone (MartCQTNet.encoder); the CQTNet part keeps its
    initialisation. Returns the pre-training header.

    Refused, naming what differs, unless the run's model is ``mart``, its log-mel frontend is the
    one pre-training's finest level computes (experiments.mart.finetune_mel_config: same sample
    rate, n_fft, hop, mel bands, compression), model.encoder_width is the pre-trained width and
    model.window_frames the finest part's frame count; and unless the encoder weights fit exactly
    (missing, unexpected and wrongly shaped keys are named).
    """
    from csi_training.experiments.mart import finetune_mel_config
    from csi_training.experiments.mart_pretrain import PRETRAIN_FORMAT_VERSION, pretrain_config_from_dict
    from csi_training.frontends import frontend_config_from_dict
    from csi_training.models.mart import MartCQTNet

    directory = Path(directory)
    where = f"cannot start from the MART pre-training checkpoint {directory}"
    header = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if header.get("format_version") != PRETRAIN_FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format version {header.get('format_version')}, this csi_training reads "
            f"{PRETRAIN_FORMAT_VERSION}"
        )
    if config.model.name != "mart" or not isinstance(backbone, MartCQTNet):
        raise CheckpointError(f"{where}: it holds a MART encoder, which only model.name 'mart' takes")
    try:
        pretrain = pretrain_config_from_dict(header["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: it holds an invalid config: {exc}") from exc
    hierarchy = pretrain.model.hierarchy
    expected = finetune_mel_config(hierarchy).to_dict()
    try:
        ours = frontend_config_from_dict(dict(config.frontend)).to_dict()
    except ValueError as exc:
        raise CheckpointError(f"{where}: invalid frontend section: {exc}") from exc
    differing = [
        f"frontend.{key} (pre-training {expected.get(key)!r}, this run {ours.get(key)!r})"
        for key in config_diff(expected, ours)
    ]
    for key, theirs, mine in (
        ("model.encoder_width", pretrain.model.width, config.model.encoder_width),
        ("model.window_frames", hierarchy.frames, config.model.window_frames),
    ):
        if theirs != mine:
            differing.append(f"{key} (pre-training {theirs!r}, this run {mine!r})")
    if differing:
        raise CheckpointError(f"{where}: " + "; ".join(differing))

    weights = _load_weights(directory / "model.safetensors", f"{where}: no model.safetensors")
    prefix = "encoder."
    found = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
    problems = _mismatch(backbone.encoder.state_dict(), found, prefix)
    if problems:
        raise CheckpointError(f"{where}: its encoder weights do not fit model.encoder: {problems}")
    backbone.encoder.load_state_dict(found)
    logger.info("MART encoder (%d tensors) loaded from %s; CQTNet starts fresh", len(found), directory)
    return header
