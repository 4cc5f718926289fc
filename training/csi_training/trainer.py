"""The training loop shared by every recipe (the MOVE-style baseline today).

One call, :func:`train`, runs a whole config: data (features through the cache, or versions
synthesised on the fly), P×K clique batches, augmentation, mixed precision (bf16 on CPUs that
support it, fp16/bf16 on CUDA), triplet + optional classification loss, per-epoch validation on
held-out works, best/last checkpoints and exact resume. It runs unchanged under ``torchrun``: each
process reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, joins a process group (NCCL on GPUs, gloo on
CPUs), trains on its own slice of every global batch, and rank 0 validates and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from csi_training.augment import FeatureAugment, crop
from csi_training.batching import CliqueBatchSampler, split_works
from csi_training.checkpoint import check_resumable, read_header, save_checkpoint
from csi_training.config import TrainConfig
from csi_training.datasets import FeatureSet, embed_features
from csi_training.frontends import Frontend
from csi_training.models.encoder import build_encoder

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "autocast", "resolve_device", "train"]


@dataclass
class TrainResult:
    out_dir: Path
    best: dict[str, Any]
    last: dict[str, Any]
    epochs_run: int


# -- devices, precision, processes ------------------------------------------------------------------


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but torch sees no CUDA GPU")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision where it is fast: bf16 on CUDA (fp16 before Ampere) and on CPUs with bf16 units."""
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Process:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _init_process(device_spec: str) -> Process:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        use_nccl = device_spec != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    return Process(rank=rank, world=world, local_rank=local_rank)


# -- the model trained -------------------------------------------------------------------------


class TrainNet(nn.Module):
    """Backbone + optional classification head, as one module so DDP syncs both."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """x [B, F, T] → (unit embeddings [B, D] float32, CE loss, CE accuracy) (0 without a head)."""
        raw = self.backbone.forward_unnormalized(x).float()  # type: ignore[operator]
        emb = nn.functional.normalize(raw, dim=-1)
        if self.head is None:
            return emb, raw.new_zeros(()), 0.0
        ce, stats = self.head(raw, labels)
        return emb, ce, float(stats["accuracy"])


# -- data ----------------------------------------------------------------------------------------


def _cache_for(config: TrainConfig, frontend: Frontend) -> Any:
    from csi_training.feature_cache import FeatureCache

    root = config.data.cache_dir or str(Path(config.data.manifest or ".").resolve().parent / ".csi-features")
    namespace = {"frontend": frontend.config.to_dict(), "max_s": config.data.eval_max_s, "v": 1}
    return FeatureCache(root, namespace)


def _load_splits(
    config: TrainConfig, frontend: Frontend, proc: Process, progress: bool
) -> tuple[FeatureSet, FeatureSet]:
    """Train and validation feature sets from the manifest (rank 0 fills the cache first)."""
    from csi_training.data import read_manifest
    from csi_training.datasets import load_manifest_features

    assert config.data.manifest is not None
    entries = read_manifest(config.data.manifest)
    split = split_works(
        [e.work_id for e in entries], config.data.val_works, config.data.test_works, config.data.split_seed
    )
    train_entries = [e for e in entries if e.work_id in split.train]
    val_entries = [e for e in entries if e.work_id in split.val]
    logger.info(
        "manifest %s: %d files, %d works → train %d works / val %d / test %d (held out)",
        config.data.manifest,
        len(entries),
        len(split.train) + len(split.val) + len(split.test),
        len(split.train),
        len(split.val),
        len(split.test),
    )
    cache = _cache_for(config, frontend)

    def load() -> list[FeatureSet]:
        sets = []
        for name, subset in (("train", train_entries), ("val", val_entries)):
            bar = _progress(len(subset), f"features ({name})", enabled=progress and proc.main)
            sets.append(load_manifest_features(subset, frontend, cache, config.data.eval_max_s, bar.update))
            bar.close()
        return sets

    # rank 0 fills the shared cache first; the other ranks then read it instead of recomputing
    sets = load() if proc.main else []
    proc.barrier()
    if not proc.main:
        sets = load()
    return sets[0], sets[1]


class _Bar:
    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="it", dynamic_ncols=True, leave=False)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix(self, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**kw, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(total: int, desc: str, enabled: bool) -> _Bar:
    return _Bar(total, desc, enabled)


class _Batches:
    """Training batches x [B, F, T] float32 and labels [B] from a feature set."""

    def __init__(self, config: TrainConfig, train: FeatureSet, frame_rate: float, proc: Process) -> None:
        self.config = config
        self.train = train
        self.labels = {w: i for i, w in enumerate(sorted(set(train.work_ids)))}
        self.item_labels = np.array([self.labels[w] for w in train.work_ids], dtype=np.int64)
        self.frames = max(8, round(config.data.clip_s * frame_rate))
        self.sampler = CliqueBatchSampler(
            train.items_by_work(self.labels),
            config.data.works_per_batch,
            config.data.versions_per_work,
            seed=config.seed,
            rank=proc.rank,
            world_size=proc.world,
            steps_per_epoch=config.optim.steps_per_epoch,
        )
        self.augment = FeatureAugment(config.augment)
        self.rank = proc.rank

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch)
        for step, items in enumerate(self.sampler):
            rng = np.random.default_rng([self.config.seed, epoch, step, self.rank, 1])
            stretch = self.augment.stretch_factors(len(items), rng)
            x = np.stack([crop(self.train.features[i], self.frames, rng, s) for i, s in zip(items, stretch)])
            xt = self.augment(torch.from_numpy(x), rng)
            yield xt, torch.from_numpy(self.item_labels[items])


VALIDATION_EPOCH = 1_000_000  # online validation versions: an epoch training never reaches


class _OnlineBatches:
    """Training batches synthesised on the fly from note events (``data.source = "online"``).

    Each work has ``online_versions_per_work`` virtual items per epoch; what version v of work w
    sounds like depends on (seed, work, v, epoch), so every epoch brings new versions. Waveform
    clips are rendered by DataLoader workers (``data.num_workers``), turned into features by the
    frontend on the training device, then pitch-rolled and masked like cached features (tempo
    already varies in the synthesis, so crops are not stretched).
    """

    def __init__(
        self, config: TrainConfig, works: list[Any], frontend: Frontend, device: torch.device, proc: Process
    ) -> None:
        from csi_training.render.online import OnlineVersions

        self.config = config
        self.labels = {w.work_id: i for i, w in enumerate(works)}
        v = config.data.online_versions_per_work
        self.dataset = OnlineVersions(
            works,
            sample_rate=frontend.sample_rate,
            clip_s=config.data.clip_s,
            seed=config.seed,
            versions_per_work=v,
        )
        self.sampler = CliqueBatchSampler(
            {i: list(range(i * v, (i + 1) * v)) for i in range(len(works))},
            config.data.works_per_batch,
            config.data.versions_per_work,
            seed=config.seed,
            rank=proc.rank,
            world_size=proc.world,
            steps_per_epoch=config.optim.steps_per_epoch,
        )
        self.frontend = frontend.to(device)
        self.device = device
        self.augment = FeatureAugment(dataclasses.replace(config.augment, stretch_p=0.0))
        self.rank = proc.rank

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, num_workers=self.config.data.num_workers
        )
        for step, (waves, work_index) in enumerate(loader):
            rng = np.random.default_rng([self.config.seed, epoch, step, self.rank, 2])
            with torch.no_grad():
                feats = self.frontend(waves.to(self.device)).float()
            yield self.augment(feats, rng), work_index


def _online_data(
    config: TrainConfig, frontend: Frontend, device: torch.device, proc: Process, progress: bool
) -> tuple[_OnlineBatches, FeatureSet]:
    """Training batches and validation features (fixed versions) from a note-event corpus."""
    from csi_training.render.notes import load_note_corpus
    from csi_training.render.online import OnlineVersions

    assert config.data.notes is not None
    works = load_note_corpus(config.data.notes)
    split = split_works(
        [w.work_id for w in works], config.data.val_works, config.data.test_works, config.data.split_seed
    )
    train_works = [w for w in works if w.work_id in split.train]
    val_works = [w for w in works if w.work_id in split.val]
    logger.info(
        "note corpus %s: %d works → train %d / val %d / test %d (held out)",
        config.data.notes,
        len(works),
        len(train_works),
        len(val_works),
        len(split.test),
    )
    batches = _OnlineBatches(config, train_works, frontend, device, proc)
    val = FeatureSet()
    if val_works:
        # validation versions are fixed (one far-away epoch of a differently seeded dataset)
        fixed = OnlineVersions(
            val_works,
            sample_rate=frontend.sample_rate,
            clip_s=None,
            seed=config.seed + 7919,
            versions_per_work=config.data.versions_per_work,
            max_duration_s=config.data.eval_max_s,
        )
        bar = _progress(len(fixed), "validation versions", enabled=progress and proc.main)
        for i in range(len(fixed) if proc.main else 0):
            wave, w = fixed[(i // fixed.versions_per_work, i % fixed.versions_per_work, VALIDATION_EPOCH)]
            with torch.no_grad():
                feats = frontend.cpu()(wave.unsqueeze(0))[0].numpy()
            val.features.append(feats.astype(np.float16))
            val.work_ids.append(val_works[w].work_id)
            val.version_ids.append(f"v{i % fixed.versions_per_work}")
            val.paths.append(f"{val_works[w].work_id}#v{i % fixed.versions_per_work}")
            bar.update()
        bar.close()
        frontend.to(device)
    return batches, val


# -- the loop ------------------------------------------------------------------------------------


def _optimizer(config: TrainConfig, params: Any) -> torch.optim.Optimizer:
    o = config.optim
    if o.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=0.9, weight_decay=o.weight_decay, nesterov=True)


def _lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _validate(backbone: nn.Module, val: FeatureSet, device: torch.device, max_frames: int) -> dict[str, Any]:
    from csi_training.metrics import evaluate

    if len(val) < 2 or len(set(val.work_ids)) < 2:
        return {}
    emb = embed_features(backbone, val.features, device, max_frames=max_frames)
    result = evaluate(emb, val.work_ids)
    return {
        k: (float(v) if isinstance(v, int | float | np.floating | np.integer) else v)
        for k, v in result.items()
        if not isinstance(v, np.ndarray)
    }


def train(
    config: TrainConfig, resume: bool = False, progress: bool = True, stop_after: int | None = None
) -> TrainResult:
    """Run a training config to the end (or resume the run in ``config.out_dir``).

    ``stop_after``: run at most this many epochs in this call (a preemptible job, or a budget), leaving
    a ``last`` checkpoint that ``resume=True`` continues exactly where it stopped.
    """
    proc = _init_process(config.device)
    try:
        return _train(config, resume, progress, proc, stop_after)
    finally:
        if proc.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _check_replicas(net: nn.Module, proc: Process) -> None:
    """Under DDP every rank must hold the same weights; compare a float64 checksum across ranks."""
    if proc.world == 1:
        return
    with torch.no_grad():
        flat = torch.cat([p.detach().double().flatten().cpu() for p in net.parameters()])
        mine = torch.stack(
            [flat.sum(), (flat * flat).sum(), (flat * torch.arange(flat.numel(), dtype=flat.dtype)).sum()]
        )
    gathered = [torch.zeros_like(mine) for _ in range(proc.world)]
    dist.all_gather(gathered, mine)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(
            f"DDP replicas diverged: parameter checksums per rank {[g.tolist() for g in gathered]}"
        )
    if proc.main:
        logger.info("parameters identical on %d ranks (checksum %.6e)", proc.world, float(mine[0]))


def _train(
    config: TrainConfig, resume: bool, progress: bool, proc: Process, stop_after: int | None
) -> TrainResult:
    device = resolve_device(config.device, proc.local_rank)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed + proc.rank)
    out_dir = Path(config.out_dir)
    last_dir, best_dir = out_dir / "last", out_dir / "best"

    encoder = build_encoder(config.frontend, config.model)
    frontend = encoder.frontend
    frame_rate = float(frontend.frame_rate)
    batches: _Batches | _OnlineBatches
    if config.data.source == "online":
        batches, val_set = _online_data(config, frontend, device, proc, progress)
        train_set = FeatureSet()
    else:
        train_set, val_set = _load_splits(config, frontend, proc, progress)
        batches = _Batches(config, train_set, frame_rate, proc)

    head: nn.Module | None = None
    if config.loss.ce_weight > 0:
        from csi_training.losses import ClassificationHead

        head = ClassificationHead(
            config.model.embedding_dim, len(batches.labels), label_smoothing=config.loss.label_smoothing
        )
    from csi_training.losses import TripletLoss

    triplet = TripletLoss(margin=config.loss.margin, mining=config.loss.mining, metric=config.loss.distance)
    net = TrainNet(encoder.backbone, head).to(device)
    model: nn.Module = net
    if proc.world > 1:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = _optimizer(config, net.parameters())
    steps_per_epoch = len(batches.sampler)
    total_steps = steps_per_epoch * config.optim.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, total_steps, config.optim.warmup_steps, config.optim.schedule)
    )
    scaler = torch.amp.GradScaler(
        "cuda", enabled=device.type == "cuda" and config.amp and not torch.cuda.is_bf16_supported()
    )

    start_epoch, step, best_map = 0, 0, -1.0
    history: list[dict[str, Any]] = []
    if resume:
        start_epoch, step, history, best_map = _restore(last_dir, config, net, optimizer, scheduler, scaler)
        logger.info("resuming %s at epoch %d (step %d)", out_dir, start_epoch, step)
    elif proc.main and last_dir.exists():
        raise FileExistsError(
            f"{out_dir} already holds a run; pass --resume to continue it or choose another out_dir"
        )
    eval_frames = max(8, round(config.data.eval_max_s * frame_rate))
    info_base = {
        "train_works": len(batches.labels),
        "train_files": len(train_set),
        "val_works": len(set(val_set.work_ids)),
        "val_files": len(val_set),
        "skipped_files": len(train_set.skipped) + len(val_set.skipped),
        "world_size": proc.world,
    }
    last_metrics: dict[str, Any] = history[-1] if history else {}
    best_metrics: dict[str, Any] = (
        max(history, key=lambda h: h.get("val", {}).get("MAP", -1)) if history else {}
    )

    end_epoch = (
        config.optim.epochs if stop_after is None else min(config.optim.epochs, start_epoch + stop_after)
    )
    for epoch in range(start_epoch, end_epoch):
        model.train()
        bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{config.optim.epochs}", progress and proc.main)
        sums = {"loss": 0.0, "triplet": 0.0, "ce": 0.0, "ce_accuracy": 0.0, "active": 0.0}
        t0, n_samples = time.monotonic(), 0
        for x, labels in batches.epoch(epoch):
            x, labels = x.to(device, non_blocking=True), labels.to(device)
            with autocast(device, config.amp):
                emb, ce, ce_acc = model(x, labels)
            trip, stats = triplet(emb.float(), labels)
            loss = trip + config.loss.ce_weight * ce.float()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch + 1} step {step}: triplet {trip}, ce {ce}"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(net.parameters(), config.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            n_samples += x.shape[0]
            active = float(stats.get("active_fraction", 0.0))
            for k, v in (
                ("loss", loss.item()),
                ("triplet", trip.item()),
                ("ce", float(ce)),
                ("ce_accuracy", ce_acc),
                ("active", active),
            ):
                sums[k] += v
            bar.update()
            bar.set_postfix(
                loss=f"{loss.item():.4f}", active=f"{active:.2f}", lr=f"{scheduler.get_last_lr()[0]:.2e}"
            )
        bar.close()
        elapsed = time.monotonic() - t0
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "train": {k: v / max(1, steps_per_epoch) for k, v in sums.items()},
            "samples_per_s": n_samples * proc.world / max(elapsed, 1e-9),
            "lr": scheduler.get_last_lr()[0],
        }
        _check_replicas(net, proc)
        if proc.main:
            with autocast(device, config.amp):
                record["val"] = _validate(net.backbone, val_set, device, eval_frames)
            history.append(record)
            val_map = record["val"].get("MAP", -1.0)
            logger.info(
                "epoch %d/%d: loss %.4f, active triplets %.2f, %.0f samples/s, val %s",
                epoch + 1,
                config.optim.epochs,
                record["train"]["loss"],
                record["train"]["active"],
                record["samples_per_s"],
                _fmt_metrics(record["val"]),
            )
            _append_history(out_dir, record)
            info = {**info_base, "epoch": epoch + 1, "step": step}
            state = {
                "epoch": epoch + 1,
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "head": head.state_dict() if head is not None else {},
                "torch_rng": torch.get_rng_state(),
                "best_map": max(best_map, val_map),
            }
            metrics = {"current": record, "history": history}
            if val_map > best_map or not best_metrics:
                best_map, best_metrics = val_map, record
                save_checkpoint(best_dir, encoder, config, info, {**metrics, "best": record})
            save_checkpoint(
                last_dir, encoder, config, info, {**metrics, "best": best_metrics}, train_state=state
            )
            last_metrics = record
        proc.barrier()
    return TrainResult(
        out_dir=out_dir, best=best_metrics, last=last_metrics, epochs_run=end_epoch - start_epoch
    )


def _fmt_metrics(m: dict[str, Any]) -> str:
    if not m:
        return "(no validation works)"
    return ", ".join(f"{k} {m[k]:.3f}" for k in ("MAP", "P@10", "MR1", "MRR") if k in m)


def _append_history(out_dir: Path, record: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "history.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _restore(
    last_dir: Path,
    config: TrainConfig,
    net: TrainNet,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
) -> tuple[int, int, list[dict[str, Any]], float]:
    from safetensors.torch import load_file

    from csi_training.checkpoint import CheckpointError

    header = read_header(last_dir)
    check_resumable(header, config)
    weights = load_file(str(last_dir / "model.safetensors"))
    net.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in weights.items()})
    state_file = last_dir / "train_state.pt"
    if not state_file.exists():
        raise CheckpointError(f"{last_dir} has no train_state.pt; it cannot be resumed (only evaluated)")
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    if net.head is not None:
        net.head.load_state_dict(state["head"])
    torch.set_rng_state(state["torch_rng"])
    metrics = json.loads((last_dir / "metrics.json").read_text())
    return int(state["epoch"]), int(state["step"]), list(metrics.get("history", [])), float(state["best_map"])
