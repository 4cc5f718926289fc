"""Training configuration: nested frozen dataclasses loaded from YAML or TOML.

A config file mirrors :class:`TrainConfig`; every section is optional and unknown keys are refused
with their full dotted path and the keys that are allowed, so a typo never trains silently with a
default. Example (YAML)::

    recipe: move
    seed: 0
    frontend: {kind: cqt, sample_rate: 16000, hop_length: 640, n_bins: 84, pool: 5}
    model: {width: small, embedding_dim: 256}
    loss: {mining: semi_hard, margin: 0.3, ce_weight: 0.0}
    data: {manifest: corpus/manifest.csv, clip_s: 30, works_per_batch: 16, versions_per_work: 4}
    optim: {epochs: 30, lr: 1.0e-3}

The frontend section is passed to ``csi_training.frontends.frontend_from_dict``, which validates it
(sample rate and CQT parameters are pinned in every checkpoint and exported bundle).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "DiscoverConfig",
    "LossConfig",
    "MARLConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "config_diff",
    "config_from_dict",
    "config_to_dict",
    "load_config",
]


class ConfigError(ValueError):
    """A configuration file or dict that does not describe a valid training run."""


def _default_frontend() -> dict[str, Any]:
    # 16 kHz, 25 frames/s CQT over 7 octaves from C1, averaged to 5 frames/s for the backbone.
    return {
        "kind": "cqt",
        "sample_rate": 16000,
        "hop_length": 640,
        "fmin": 32.703,
        "n_bins": 84,
        "bins_per_octave": 12,
        "pool": 5,
        "log": "log1p",
    }


@dataclass(frozen=True)
class ModelConfig:
    """The backbone: ``cqtnet`` (``csi_training.models.cqtnet``) on the frontend's features, or ``mart``
    (``csi_training.models.mart.MartCQTNet``): an FCN-7 projection encoder (MART's, possibly
    pre-trained) over windows of ``window_frames`` log-mel frames every ``window_hop`` frames, whose
    vectors form the sequence the CQTNet-style network reads. ``mart`` needs a ``logmel`` frontend.

    width / embedding_dim / pooling / dropout: the CQTNet part. encoder_width, window_frames,
    window_hop: the FCN-7 and its windows (mart only; window_frames = the finest part length of
    pre-training, 128 frames by default, half-overlapping).

    whitening: a learned whitening layer after the backbone (``csi_training.models.whitening``). It
    is fitted after training by ``csi whiten``, which sets it; training refuses a config with it on.

    track_window_s / track_hop_s: multi-scale track vectors (``csi_training.track_pooling``). When
    track_window_s > 0, a track's vector is the normalised sum of its whole-track embedding and the
    mean of the unit embeddings of windows of track_window_s seconds every track_hop_s seconds; 0
    keeps the whole-track embedding alone. Set after training by ``csi pooling``; exported bundles
    carry it, so the runtime's track vectors equal the evaluated ones.
    """

    name: Literal["cqtnet", "mart"] = "cqtnet"
    width: Literal["small", "full"] = "small"
    embedding_dim: int = 256
    pooling: Literal["max", "avg", "gem"] = "gem"
    dropout: float = 0.1
    encoder_width: Literal["full", "small", "tiny"] = "full"
    window_frames: int = 128
    window_hop: int = 64
    whitening: bool = False
    track_window_s: float = 0.0
    track_hop_s: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.track_window_s) and self.track_window_s >= 0):
            raise ConfigError(f"model.track_window_s must be >= 0 seconds, got {self.track_window_s}")
        if self.track_window_s > 0 and not (
            math.isfinite(self.track_hop_s) and 0 < self.track_hop_s <= self.track_window_s
        ):
            raise ConfigError(
                "model.track_hop_s must be in (0, track_window_s] when track_window_s > 0, got "
                f"{self.track_hop_s} (window {self.track_window_s})"
            )
        if self.window_frames < 1 or not 1 <= self.window_hop <= self.window_frames:
            raise ConfigError(
                "model.window_frames must be >= 1 and model.window_hop in [1, window_frames] (a larger "
                f"hop would skip frames), got {self.window_frames}, {self.window_hop}"
            )
        if not 8 <= self.embedding_dim <= 4096:
            raise ConfigError(f"model.embedding_dim must be in [8, 4096], got {self.embedding_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class LossConfig:
    """Triplet loss with online mining, plus an optional label-smoothed classification head.

    ``ce_head``: ``"bnneck"`` (BatchNorm neck, then a linear classifier: ByteCover-style) or
    ``"cosine"`` (logits ``ce_scale * (cos(embedding, class weight) - ce_margin)`` on the target,
    CosFace; acts on the very embedding retrieval ranks by). ``ce_margin`` needs ``ce_head: cosine``.
    """

    mining: Literal["random", "semi_hard", "hard"] = "hard"
    margin: float = 0.3
    distance: Literal["euclidean", "sqeuclidean", "cosine"] = "euclidean"
    ce_weight: float = 0.0
    label_smoothing: float = 0.1
    ce_head: Literal["bnneck", "cosine"] = "bnneck"
    ce_scale: float = 30.0
    ce_margin: float = 0.0

    def __post_init__(self) -> None:
        if self.margin <= 0:
            raise ConfigError(f"loss.margin must be > 0, got {self.margin}")
        if self.ce_weight < 0:
            raise ConfigError(f"loss.ce_weight must be >= 0, got {self.ce_weight}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.ce_scale > 0:
            raise ConfigError(f"loss.ce_scale must be > 0, got {self.ce_scale}")
        if not 0.0 <= self.ce_margin < 1.0:
            raise ConfigError(f"loss.ce_margin must be in [0, 1), got {self.ce_margin}")
        if self.ce_margin > 0 and self.ce_head != "cosine":
            raise ConfigError(f"loss.ce_margin needs loss.ce_head: cosine (got ce_head: {self.ce_head})")


@dataclass(frozen=True)
class DataConfig:
    """Where training audio comes from and how batches are formed.

    ``source="manifest"``: audio files listed in a CSV manifest (``path,work_id[,version_id]``),
    decoded once, turned into features by the frontend and kept in a feature cache.
    ``source="online"``: versions synthesised inside the training loop from a note-event corpus.
    Works (never individual files) are split into train / validation / test.
    """

    source: Literal["manifest", "online"] = "manifest"
    manifest: str | None = None
    notes: str | None = None
    cache_dir: str | None = None
    val_works: float = 0.1
    test_works: float = 0.0
    split_seed: int = 0
    clip_s: float = 30.0
    eval_max_s: float = 180.0
    works_per_batch: int = 16
    versions_per_work: int = 4
    online_versions_per_work: int = 8
    num_workers: int = 0
    # 0: every training work equally often; 1: every source collection (the work id's text before
    # the first "/", after any "scheme:") equally often; in between, a work of a collection of n
    # works is drawn with weight n ** -balance_collections
    balance_collections: float = 0.0

    def __post_init__(self) -> None:
        if self.source == "manifest" and not self.manifest:
            raise ConfigError("data.manifest is required when data.source is 'manifest'")
        if self.source == "online" and not self.notes:
            raise ConfigError("data.notes (a note-event corpus) is required when data.source is 'online'")
        for name in ("val_works", "test_works"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0 and not (value >= 1 and float(value).is_integer()):
                raise ConfigError(f"data.{name} must be a fraction in [0, 1) or a whole number of works")
        if self.works_per_batch < 2:
            raise ConfigError("data.works_per_batch must be >= 2 (a triplet needs a negative work)")
        if self.versions_per_work < 2:
            raise ConfigError("data.versions_per_work must be >= 2 (a triplet needs a positive)")
        if self.clip_s <= 0 or self.eval_max_s <= 0:
            raise ConfigError("data.clip_s and data.eval_max_s must be > 0 seconds")
        if not 0.0 <= self.balance_collections <= 1.0:
            raise ConfigError("data.balance_collections must be in [0, 1]")


@dataclass(frozen=True)
class AugmentConfig:
    """Feature-domain augmentation applied to training crops (probabilities per crop)."""

    pitch_roll_p: float = 0.5
    pitch_roll_max: int = 12  # CQT bins, both directions; the vacated bins are zero-filled
    stretch_p: float = 0.3
    stretch_min: float = 0.75
    stretch_max: float = 1.3
    specaugment_p: float = 0.4
    freq_masks: int = 2
    freq_mask_max: int = 12  # bins
    time_masks: int = 2
    time_mask_max: float = 0.1  # fraction of the crop

    def __post_init__(self) -> None:
        for name in ("pitch_roll_p", "stretch_p", "specaugment_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augment.{name} must be a probability in [0, 1]")
        if not 0 < self.stretch_min <= self.stretch_max:
            raise ConfigError("augment.stretch_min must be > 0 and <= augment.stretch_max")


@dataclass(frozen=True)
class OptimConfig:
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 20
    steps_per_epoch: int | None = None  # None: one pass over the training works per epoch
    warmup_steps: int = 100
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = 5.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs < 1:
            raise ConfigError("optim.lr must be > 0 and optim.epochs >= 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError("optim.steps_per_epoch must be >= 1 when given")


@dataclass(frozen=True)
class DiscoverConfig:
    """DisCover (Xun et al., SIGIR 2023) disentanglement modules; used when ``recipe: discover``.

    See ``csi_training.discover`` for what each module does and the choices made where the paper is
    silent. Steps count encoder updates (training steps) from the start of this run.
    """

    # KDM: vCLUB mutual-information upper bound between embedding and prior version-variant factors
    kdm: bool = True
    factors: tuple[str, ...] = ("f0", "timbre")
    mi_weight: float = 0.1  # per factor, on the (clamped) vCLUB estimate in nats
    club_hidden: int = 256  # hidden units of the variational q(factor | embedding) MLPs
    club_lr: float = 1e-3
    club_steps: int = 1  # q updates per encoder update (the alternating schedule)
    mi_warmup_steps: int = 100  # q trains alone for this many steps, then the penalty ramps in over as many
    mi_clamp: float = 0.0  # the encoder minimises max(vCLUB, mi_clamp): a negative estimate is not a reward
    logvar_min: float = -6.0  # q's log-variance is squashed into [logvar_min, logvar_max]
    logvar_max: float = 4.0
    n_timbre_coeffs: int = 12  # cepstral coefficients 1..n of the log-CQT envelope (c0, the level, dropped)
    # GADM: gradient-identified variant elements masked; a discriminator tells entangled from disentangled
    gadm: bool = True
    mask_ratio: float = 0.1  # fraction of embedding elements masked per clip
    mask: Literal["gradient", "random"] = "gradient"  # random: the ablation of the gradient criterion
    transition: Literal["sqeuclidean", "cosine"] = "sqeuclidean"  # cost between intra-work versions
    adv_weight: float = 0.1
    adv_warmup_steps: int = 100  # the discriminator trains alone for this many steps, then a linear ramp
    disc_hidden: int = 128
    disc_lr: float = 2e-4
    disc_steps: int = 1  # discriminator updates per encoder update

    def __post_init__(self) -> None:
        unknown = sorted(set(self.factors) - {"f0", "timbre"})
        if unknown or not self.factors or len(set(self.factors)) != len(self.factors):
            raise ConfigError(f"discover.factors must be distinct names from f0, timbre; got {self.factors}")
        for name in ("mi_weight", "adv_weight", "mi_warmup_steps", "adv_warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"discover.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("club_hidden", "disc_hidden", "club_steps", "disc_steps", "n_timbre_coeffs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"discover.{name} must be >= 1, got {getattr(self, name)}")
        if self.club_lr <= 0 or self.disc_lr <= 0:
            raise ConfigError("discover.club_lr and discover.disc_lr must be > 0")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"discover.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not self.logvar_min < self.logvar_max:
            raise ConfigError("discover.logvar_min must be < discover.logvar_max")


@dataclass(frozen=True)
class MARLConfig:
    """MARL multi-view VAE (ISMIR 2024 LBD; docs/recipes/marl.md); used when ``recipe: marl``.

    The two views of an item are two versions of one work (``data.versions_per_work: 2``). The shared
    latent has ``model.embedding_dim`` dimensions: its expert mean, L2-normalised, is the embedding the
    checkpoint exports, so there is no separate shared size here to disagree with it.
    """

    private_dim: int = 32  # dimensions of each view's private latent
    decoder_channels: int = 32  # channels of the convolutional decoder's widest (first) stage
    combine: Literal["poe", "mean"] = "poe"  # product of the views' shared experts, or their mean
    alpha: float = 1.0  # weight of the index-code mutual information, per latent subspace
    beta: float = 1.0  # weight of the total correlation
    gamma: float = 1.0  # weight of the dimension-wise KL
    estimator: Literal["weighted", "chen"] = "weighted"  # aggregate-posterior estimate (losses.tcvae)
    # optional supervised term: the loss section's triplet loss on the normalised shared means
    # (0: the self-supervised objective of the seed)
    triplet_weight: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.private_dim <= 4096:
            raise ConfigError(f"marl.private_dim must be in [1, 4096], got {self.private_dim}")
        if not 4 <= self.decoder_channels <= 1024:
            raise ConfigError(f"marl.decoder_channels must be in [4, 1024], got {self.decoder_channels}")
        for name in ("alpha", "beta", "gamma", "triplet_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"marl.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainConfig:
    recipe: Literal["move", "discover", "marl"] = "move"
    seed: int = 0
    out_dir: str = "runs/move"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision, used on CUDA only
    threads: int | None = None  # torch intra-op threads on CPU; None: torch's default
    # a checkpoint folder whose backbone weights start this run (fine-tuning, e.g. on more data);
    # its frontend and model sections must equal this config's; the head and optimiser start fresh
    init_from: str | None = None
    frontend: dict[str, Any] = field(default_factory=_default_frontend)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(manifest="manifest.csv"))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    discover: DiscoverConfig = field(default_factory=DiscoverConfig)
    marl: MARLConfig = field(default_factory=MARLConfig)

    def __post_init__(self) -> None:
        if self.recipe == "marl":
            if self.data.source != "manifest":
                raise ConfigError(
                    "recipe marl needs data.source 'manifest': its beta-TCVAE terms are estimated with "
                    "the finite numbers of training recordings and version pairs"
                )
            if self.data.versions_per_work != 2:
                raise ConfigError(
                    "recipe marl trains on version pairs: data.versions_per_work must be 2, "
                    f"got {self.data.versions_per_work}"
                )
            if self.loss.ce_weight > 0:
                raise ConfigError("recipe marl has no classification head: loss.ce_weight must be 0")


# -- dict <-> dataclass ------------------------------------------------------------------------


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Validate ``value`` against a (simple) type annotation; ints are accepted for floats."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_type(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: {value!r} is not allowed")
    if origin is tuple:  # tuple[X, ...]: a list in YAML/TOML/JSON
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item, _) = typing.get_args(annotation)
        return tuple(_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table/mapping, got {type(value).__name__}")
        return dict(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, where)  # type: ignore[arg-type]
    raise ConfigError(f"{where}: unsupported type {annotation!r}")  # a bug in this module, not in the file


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a table/mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"allowed in {where or 'the top level'}: {', '.join(names)}"
        )
    kwargs = {
        name: _check_type(data[name], hints[name], f"{where}.{name}" if where else name)
        for name in names
        if name in data
    }
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` (unknown keys are errors, with their path)."""
    config: TrainConfig = _build(TrainConfig, data, "")
    if "kind" not in config.frontend:
        raise ConfigError("frontend.kind is required (cqt, logmel or chroma)")
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-serialisable dict of a config dataclass (round-trips through config_from_dict)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def read_config_dict(path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A YAML (.yaml/.yml), TOML (.toml) or JSON config file as a dict, with ``overrides`` (dotted
    keys → values) applied; not validated (:func:`load_config` validates a training config)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config {path}: unknown format {suffix!r} (use .yaml, .yml, .toml or .json)")
    except ConfigError:
        raise
    except Exception as exc:  # the parsers raise their own exception types with line numbers
        raise ConfigError(f"config {path} is not valid {suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: the top level must be a table/mapping")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: {key} is not a section")
        node[leaf] = value
    return data


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML (.yaml/.yml) or TOML (.toml) config; ``overrides`` maps dotted keys to values."""
    data = read_config_dict(path, overrides)
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"config {path}: {exc}") from exc


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (missing keys count as different)."""
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    for key in keys:
        name = f"{prefix}{key}"
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out.extend(config_diff(va, vb, name + "."))
        elif va != vb:
            out.append(name)
    return out
