"""Classical CSI baselines used as reference points for trained models.

- ``chroma_features``: HPCP chroma with essentia (optional dependency, imported lazily), the
  downsampled view for Qmax and the beat-synchronous view for 2D-FTM; ``chroma_for_files``.
- ``ftm2d``: Bertin-Mahieux & Ellis (2012) 2D Fourier-transform magnitude, one vector per track.
- ``qmax``: Serra et al. (2009) Qmax alignment distance through essentia, pairwise.
"""

from __future__ import annotations

from csi_training.baselines.chroma_features import (
    ChromaForFiles,
    HPCPConfig,
    TrackChroma,
    beat_synchronous_chroma,
    beat_times,
    chroma_for_files,
    downsample_hpcp,
    hpcp,
    load_audio,
    track_chroma,
)
from csi_training.baselines.ftm2d import FTM2D, euclidean_distances, ftm2d_embed
from csi_training.baselines.qmax import QmaxConfig, qmax_distance, qmax_distance_matrix, qmax_score

__all__ = [
    "FTM2D",
    "ChromaForFiles",
    "HPCPConfig",
    "QmaxConfig",
    "TrackChroma",
    "beat_synchronous_chroma",
    "beat_times",
    "chroma_for_files",
    "downsample_hpcp",
    "euclidean_distances",
    "ftm2d_embed",
    "hpcp",
    "load_audio",
    "qmax_distance",
    "qmax_distance_matrix",
    "qmax_score",
    "track_chroma",
]
