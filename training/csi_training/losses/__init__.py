"""Training losses: triplet loss with online mining, label-smoothed classification."""

from csi_training.losses.classification import ClassificationHead
from csi_training.losses.triplet import (
    TripletLoss,
    mine_hard,
    mine_random,
    mine_semi_hard,
    pairwise_distances,
)

__all__ = [
    "ClassificationHead",
    "TripletLoss",
    "mine_hard",
    "mine_random",
    "mine_semi_hard",
    "pairwise_distances",
]
