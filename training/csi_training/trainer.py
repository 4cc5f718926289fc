"""The training loop shared by every recipe: the MOVE-style baseline (``recipe: move``), DisCover
(``recipe: discover``, whose training-only modules live in ``csi_training.discover``) and the MARL
multi-view VAE (``recipe: marl``, ``csi_training.models.marl_conv``: batches of version pairs, the
MARL objective instead of the triplet loss, the backbone returning the normalised shared expert mean).

One call, :func:`train`, runs a whole config: data (features through the cache, or versions
synthesised on the fly), P×K clique batches, augmentation, mixed precision (bf16 on CPUs that
support it, fp16/bf16 on CUDA), triplet + optional classification loss, per-epoch validation on
held-out works, best/last checkpoints and exact resume. It runs unchanged under ``torchrun``: each
process reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, joins a process group (NCCL on GPUs, gloo on
CPUs), trains on its own slice of every global batch, and rank 0 validates and writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from csi_training.checkpoint import check_resumable, init_backbone, read_header, save_checkpoint
from csi_training.config import ConfigError, TrainConfig
from csi_training.datasets import FeatureSet, embed_features
from csi_training.distributed import Process, autocast, cpu_supports_bf16, init_process, resolve_device
from csi_training.losses import ClassificationHead
from csi_training.models.encoder import build_encoder
from csi_training.track_pooling import track_window_frames
from csi_training.training_data import (
    FeatureBatches,
    OnlineBatches,
    ProgressBar,
    load_manifest_data,
    load_online_data,
)

if TYPE_CHECKING:
    from csi_training.discover.recipe import DiscoverRecipe
    from csi_training.models.marl import MARLWeights
    from csi_training.models.marl_conv import ConvMultiViewVAE

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "autocast", "cpu_supports_bf16", "resolve_device", "train"]


@dataclass
class TrainResult:
    out_dir: Path
    best: dict[str, Any]
    last: dict[str, Any]
    epochs_run: int


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


def _imprint_head(
    head: ClassificationHead,
    backbone: nn.Module,
    train_set: FeatureSet,
    batches: FeatureBatches,
    device: torch.device,
    max_frames: int,
) -> None:
    """A cosine head fine-tuning a trained backbone starts from its classes' mean embeddings: a
    random one cost the stage-3 backbone validation MAP 0.70 → 0.61 in 3 epochs."""
    t0 = time.monotonic()
    with torch.no_grad():
        emb = embed_features(backbone, train_set.features, device, max_frames=max_frames)
    n = head.imprint(torch.from_numpy(emb), torch.from_numpy(batches.item_labels))
    logger.info(
        "cosine head imprinted with the mean embeddings of %d works (%.0f s)", n, time.monotonic() - t0
    )


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


def _validate(
    backbone: nn.Module,
    val: FeatureSet,
    device: torch.device,
    max_frames: int,
    track_windows: tuple[int, int] | None = None,
) -> dict[str, Any]:
    from csi_training.metrics import evaluate

    if len(val) < 2 or len(set(val.work_ids)) < 2:
        return {}
    emb = embed_features(backbone, val.features, device, max_frames=max_frames, track_windows=track_windows)
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
    if config.model.whitening:
        raise ConfigError(
            "model.whitening is fitted after training (csi whiten --checkpoint DIR …), not trained; "
            "train or fine-tune with it off (from the checkpoint the whitening was fitted to)"
        )
    proc = init_process(config.device)
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
    batches: FeatureBatches | OnlineBatches
    if config.data.source == "online":
        batches, val_set = load_online_data(config, frontend, device, proc, progress)
        train_set = FeatureSet()
    else:
        train_set, val_set = load_manifest_data(config, frontend, proc, progress)
        batches = FeatureBatches(config, train_set, frame_rate, proc)

    eval_frames = max(8, round(config.data.eval_max_s * frame_rate))  # tracks as validation embeds them
    track_windows = track_window_frames(config.model.track_window_s, config.model.track_hop_s, frame_rate)
    head: nn.Module | None = None
    if config.loss.ce_weight > 0:
        cosine = config.loss.ce_head == "cosine"
        head = ClassificationHead(
            config.model.embedding_dim,
            len(batches.labels),
            label_smoothing=config.loss.label_smoothing,
            bn_neck=not cosine,
            cosine=cosine,
            scale=config.loss.ce_scale,
            margin=config.loss.ce_margin,
        )
    from csi_training.losses import TripletLoss

    triplet = TripletLoss(margin=config.loss.margin, mining=config.loss.mining, metric=config.loss.distance)
    net: nn.Module
    marl: ConvMultiViewVAE | None = None
    if config.recipe == "marl":
        assert isinstance(batches, FeatureBatches)  # the config admits manifest data only
        marl, marl_weights, marl_sizes = _marl_model(config, encoder.backbone, batches)
        net = marl.to(device)
    else:
        net = TrainNet(encoder.backbone, head).to(device)
    model: nn.Module = net
    if proc.world > 1:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    recipe: DiscoverRecipe | None = None
    if config.recipe == "discover":
        from csi_training.discover.recipe import DiscoverRecipe

        recipe = DiscoverRecipe(
            config.discover,
            frontend.config.to_dict(),
            config.model.embedding_dim,
            seed=config.seed,
            world_size=proc.world,
        ).to(device)
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
        start_epoch, step, history, best_map = _restore(
            last_dir, config, encoder.backbone, head, optimizer, scheduler, scaler, recipe, marl
        )
        logger.info("resuming %s at epoch %d (step %d)", out_dir, start_epoch, step)
    else:
        if proc.main and last_dir.exists():
            raise FileExistsError(
                f"{out_dir} already holds a run; pass --resume to continue it or choose another out_dir"
            )
        if config.init_from:
            init_backbone(config.init_from, encoder.backbone, config)
            logger.info("backbone initialised from %s", config.init_from)
            if isinstance(batches, FeatureBatches) and isinstance(head, ClassificationHead) and head.cosine:
                _imprint_head(head, encoder.backbone, train_set, batches, device, eval_frames)
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
        bar = ProgressBar(steps_per_epoch, f"epoch {epoch + 1}/{config.optim.epochs}", progress and proc.main)
        sums: dict[str, float] = {}
        t0, n_samples = time.monotonic(), 0
        for x, labels in batches.epoch(epoch):
            x, labels = x.to(device, non_blocking=True), labels.to(device)
            if marl is not None:
                loss, step_stats = _marl_step(
                    model, x, labels, marl_weights, marl_sizes, config, triplet, device
                )
            else:
                with autocast(device, config.amp):
                    emb, ce, ce_acc = model(x, labels)
                trip, stats = triplet(emb.float(), labels)
                loss = trip + config.loss.ce_weight * ce.float()
                step_stats = {
                    "triplet": trip.item(),
                    "ce": float(ce.detach()),
                    "ce_accuracy": ce_acc,
                    "active": float(stats.get("active_fraction", 0.0)),
                }
                if recipe is not None:
                    extra, recipe_stats = recipe.step(emb.float(), x, labels, step)
                    loss = loss + extra
                    step_stats.update(recipe_stats)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch + 1} step {step} ({config.recipe}): terms {step_stats}"
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
            for k, v in {**step_stats, "loss": loss.item()}.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update()
            shown = {k: f"{step_stats[k]:.2f}" for k in ("active", "recon") if k in step_stats}
            bar.set_postfix(loss=f"{loss.item():.4f}", **shown, lr=f"{scheduler.get_last_lr()[0]:.2e}")
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
        if recipe is not None:
            _check_replicas(recipe, proc)  # the training-only networks must stay replicas too
        if proc.main:
            with autocast(device, config.amp):
                record["val"] = _validate(encoder.backbone, val_set, device, eval_frames, track_windows)
            history.append(record)
            val_map = record["val"].get("MAP", -1.0)
            logger.info(
                "epoch %d/%d: loss %.4f, %s %.2f, %.0f samples/s, val %s",
                epoch + 1,
                config.optim.epochs,
                record["train"]["loss"],
                "reconstruction" if marl is not None else "active triplets",
                record["train"].get("recon" if marl is not None else "active", 0.0),
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
            if recipe is not None:
                state["discover"] = recipe.train_state()
            if marl is not None:
                state["marl"] = marl.auxiliary_state()
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


def _marl_model(
    config: TrainConfig, backbone: nn.Module, batches: FeatureBatches
) -> tuple[ConvMultiViewVAE, MARLWeights, tuple[int, int]]:
    """The MARL model around ``backbone``, its loss weights, and the data-set sizes of its
    beta-TCVAE estimates: (training recordings, ordered pairs of distinct versions of one work),
    counted over the works the clique sampler draws from."""
    from csi_training.models.cqtnet import CQTNet
    from csi_training.models.marl import MARLWeights
    from csi_training.models.marl_conv import ConvMultiViewVAE

    assert isinstance(backbone, CQTNet)
    m = config.marl
    model = ConvMultiViewVAE(backbone, batches.frames, m.private_dim, m.decoder_channels, m.combine)
    counts = [len(items) for items in batches.sampler.items.values()]
    sizes = (sum(counts), sum(n * (n - 1) for n in counts))
    logger.info("MARL: %d training recordings, %d ordered version pairs", *sizes)
    return model, MARLWeights(m.alpha, m.beta, m.gamma), sizes


def _marl_step(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    weights: MARLWeights,
    sizes: tuple[int, int],
    config: TrainConfig,
    triplet: nn.Module,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One MARL loss on a clique batch x [2P, F, T] of P works × 2 versions (consecutive items)."""
    from csi_training.models.marl import marl_loss
    from csi_training.models.marl_conv import ConvMultiViewVAE

    pairs = labels.view(-1, 2)
    if x.shape[0] % 2 or not torch.equal(pairs[:, 0], pairs[:, 1]):
        raise RuntimeError("recipe marl expects batches of version pairs (two consecutive items per work)")
    with autocast(device, config.amp):
        result = model(x.view(-1, 2, *x.shape[1:]))
    out, target = ConvMultiViewVAE.output(result)
    loss, stats = marl_loss(out, target, weights, sizes[0], sizes[1], config.marl.estimator)
    if config.marl.triplet_weight > 0:
        emb = nn.functional.normalize(out.expert_mu.flatten(0, 1), dim=-1)
        trip, trip_stats = triplet(emb, labels)
        loss = loss + config.marl.triplet_weight * trip
        stats["triplet"] = trip.item()
        stats["active"] = float(trip_stats.get("active_fraction", 0.0))
    stats.pop("loss")
    return loss, stats


def _restore(
    last_dir: Path,
    config: TrainConfig,
    backbone: nn.Module,
    head: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    recipe: DiscoverRecipe | None = None,
    marl: ConvMultiViewVAE | None = None,
) -> tuple[int, int, list[dict[str, Any]], float]:
    from csi_training.checkpoint import CheckpointError, load_backbone_weights

    header = read_header(last_dir)
    check_resumable(header, config)
    load_backbone_weights(last_dir, backbone)
    state_file = last_dir / "train_state.pt"
    if not state_file.exists():
        raise CheckpointError(f"{last_dir} has no train_state.pt; it cannot be resumed (only evaluated)")
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    if head is not None:
        head.load_state_dict(state["head"])
    if marl is not None:
        if "marl" not in state:
            raise CheckpointError(f"{last_dir}/train_state.pt lacks the MARL heads' and decoder's state")
        try:
            marl.load_auxiliary_state(state["marl"])
        except (ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{last_dir}/train_state.pt: {exc}") from exc
    if recipe is not None:
        if "discover" not in state:
            raise CheckpointError(f"{last_dir}/train_state.pt lacks the discover modules' state")
        recipe.load_train_state(state["discover"])
    torch.set_rng_state(state["torch_rng"])
    metrics = json.loads((last_dir / "metrics.json").read_text())
    return int(state["epoch"]), int(state["step"]), list(metrics.get("history", [])), float(state["best_map"])
