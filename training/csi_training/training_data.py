"""Where training batches come from: cached features of a manifest, or versions synthesised on the fly.

Both sources yield ``(features float32 [B, F, T], work labels int64 [B])`` batches of P works × K
versions from :class:`~csi_training.batching.CliqueBatchSampler`, and a validation
:class:`~csi_training.datasets.FeatureSet` of held-out works.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from csi_training.augment import FeatureAugment, crop
from csi_training.batching import (
    CliqueBatchSampler,
    WorkSplit,
    collection_of,
    collection_weights,
    split_works,
)
from csi_training.config import TrainConfig
from csi_training.datasets import FeatureSet
from csi_training.distributed import Process
from csi_training.frontends import Frontend

logger = logging.getLogger("csi_training.trainer")

__all__ = ["FeatureBatches", "OnlineBatches", "ProgressBar", "load_manifest_data", "load_online_data"]


def _cache_for(config: TrainConfig, frontend: Frontend) -> Any:
    from csi_training.feature_cache import FeatureCache

    root = config.data.cache_dir or str(Path(config.data.manifest or ".").resolve().parent / ".csi-features")
    return FeatureCache.for_frontend(root, frontend.config.to_dict(), config.data.eval_max_s)


def _work_weights(config: TrainConfig, labels: dict[str, int]) -> dict[int, float] | None:
    """Collection-balanced sampling weights (``data.balance_collections``), the shares logged."""
    weights = collection_weights(labels, config.data.balance_collections)
    if weights is not None:
        shares: dict[str, float] = {}
        for work, label in labels.items():
            shares[collection_of(work)] = shares.get(collection_of(work), 0.0) + weights[label]
        total = sum(shares.values())
        logger.info(
            "works drawn with collection balance %g; share of draws: %s",
            config.data.balance_collections,
            ", ".join(f"{c} {v / total:.0%}" for c, v in sorted(shares.items())),
        )
    return weights


def _split(config: TrainConfig, work_ids: list[str], source: str) -> WorkSplit:
    split = split_works(work_ids, config.data.val_works, config.data.test_works, config.data.split_seed)
    logger.info(
        "%s: %d works → train %d / val %d / test %d (held out, never used here)",
        source,
        len(split.train) + len(split.val) + len(split.test),
        len(split.train),
        len(split.val),
        len(split.test),
    )
    return split


def load_manifest_data(
    config: TrainConfig, frontend: Frontend, proc: Process, progress: bool
) -> tuple[FeatureSet, FeatureSet]:
    """Train and validation feature sets from the manifest (rank 0 fills the cache first)."""
    from csi_training.data import read_manifest
    from csi_training.datasets import load_manifest_features

    assert config.data.manifest is not None
    entries = read_manifest(config.data.manifest)
    split = _split(
        config, [e.work_id for e in entries], f"manifest {config.data.manifest} ({len(entries)} files)"
    )
    train_entries = [e for e in entries if e.work_id in split.train]
    val_entries = [e for e in entries if e.work_id in split.val]
    cache = _cache_for(config, frontend)

    def load() -> list[FeatureSet]:
        sets = []
        for name, subset in (("train", train_entries), ("val", val_entries)):
            bar = ProgressBar(len(subset), f"features ({name})", enabled=progress and proc.main)
            sets.append(load_manifest_features(subset, frontend, cache, config.data.eval_max_s, bar.update))
            bar.close()
        return sets

    # rank 0 fills the shared cache first; the other ranks then read it instead of recomputing
    sets = load() if proc.main else []
    proc.barrier()
    if not proc.main:
        sets = load()
    return sets[0], sets[1]


class ProgressBar:
    """A tqdm bar on stderr when enabled, else nothing."""

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


class FeatureBatches:
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
            work_weights=_work_weights(config, self.labels),
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


class OnlineBatches:
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
            work_weights=_work_weights(config, self.labels),
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


def load_online_data(
    config: TrainConfig, frontend: Frontend, device: torch.device, proc: Process, progress: bool
) -> tuple[OnlineBatches, FeatureSet]:
    """Training batches and validation features (fixed versions) from a note-event corpus."""
    from csi_training.render.notes import load_note_corpus
    from csi_training.render.online import OnlineVersions

    assert config.data.notes is not None
    works = load_note_corpus(config.data.notes)
    split = _split(config, [w.work_id for w in works], f"note corpus {config.data.notes}")
    train_works = [w for w in works if w.work_id in split.train]
    val_works = [w for w in works if w.work_id in split.val]
    batches = OnlineBatches(config, train_works, frontend, device, proc)
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
        bar = ProgressBar(len(fixed), "validation versions", enabled=progress and proc.main)
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
