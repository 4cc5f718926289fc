"""DisCover (Xun et al., "DisCover: Disentangled Music Representation Learning for Cover Song
Identification", SIGIR 2023) as a training recipe around any csi_training backbone.

Selected with ``recipe: discover`` in a training config (section ``discover:``, see
:class:`csi_training.config.DiscoverConfig`); everything here is training-only: checkpoints hold the
backbone alone, so they evaluate and export (``export/build_engine.py``) like any other.

**KDM** (knowledge-guided disentanglement, :mod:`.factors`, :mod:`.club`). Prior version-variant
factors are computed per training clip, and the encoder minimises a vCLUB upper bound (Cheng et al.
2020) on the mutual information between its embedding and each factor while a Gaussian q(factor |
embedding) is trained alternately on the same batch.

**GADM** (gradient-based adversarial disentanglement, :mod:`.gadm`). The gradient of the transition
cost between versions of one work with respect to the embedding marks the version-variant elements; a
mask over the top ``mask_ratio`` of them yields the disentangled representation; a discriminator
learns to tell disentangled from entangled embeddings (the paper's L2) and the encoder is trained to
fool it (adversarial distillation: the entangled embedding is pulled towards its disentangled one),
alternately with the task + MI objective (the paper's L1). See :mod:`.recipe` for the schedule.

Choices made where the paper (as summarised in our seed notes) is silent — each is a config key, and
the ablation script (``csi_training.experiments.discover_ablation``) measures the main ones:

- *Factors from features, not audio.* Training batches are CQT crops from the feature cache, so F0
  is the CQT's dominant-bin contour (statistics + pitch-class profile) and timbre is a CQT cepstrum
  (DCT of the log1p spectrum, coefficients 1..n, mean/std) — see :mod:`.factors`. Factors are
  computed on the augmented crop the backbone sees (a pitch-rolled crop has a shifted F0 factor,
  which is exactly the variation to be ignored) and standardised with running statistics. The
  CQT tracker follows the loudest partial, which is usually but not always the fundamental;
  :func:`.yin.audio_f0_factor` gives the same factor from audio with YIN (tested against librosa and
  against the CQT factor) for sources that have the waveform.
- *vCLUB form*: the full in-batch bound (every clip's q against all factors of the batch), q a
  diagonal Gaussian with MLP mean and bounded log-variance; one q per factor, equal weights.
- *Warm-up and clamping*: q trains alone for ``mi_warmup_steps``, then the MI weight ramps in
  linearly; the encoder minimises ``max(vCLUB, mi_clamp)`` (default 0) so that a badly fitted q,
  whose estimate can go negative, never rewards the encoder.
- *Transition cost*: squared euclidean distance between unit embeddings of every same-work pair in
  the batch (``transition: cosine`` is the alternative); its gradient with respect to each clip's
  embedding scores the elements; the mask is per clip (top ``mask_ratio`` of |gradient|, zeroed,
  then re-normalised). ``mask: random`` masks as many random elements: the ablation that tests
  whether the gradient criterion, rather than masking itself, is what helps.
- *Adversarial distillation*: the disentangled embedding is a detached target; the discriminator is
  an MLP on unit embeddings trained with binary cross-entropy; the encoder takes the non-saturating
  loss BCE(D(h), disentangled) with weight ``adv_weight`` after ``adv_warmup_steps``.
- *Alternation*: per training step, ``club_steps`` updates of q, then ``disc_steps`` updates of the
  discriminator, then one encoder update; each phase updates only its own parameters (tested).
"""

from __future__ import annotations

from csi_training.discover.club import VariationalGaussian, estimate_mi
from csi_training.discover.factors import cqt_f0_factor, cqt_timbre_factor
from csi_training.discover.gadm import Discriminator, top_ratio_keep_mask, transition_gradient
from csi_training.discover.recipe import DiscoverRecipe, version_factors
from csi_training.discover.yin import audio_f0_factor, yin

__all__ = [
    "DiscoverRecipe",
    "Discriminator",
    "VariationalGaussian",
    "audio_f0_factor",
    "cqt_f0_factor",
    "cqt_timbre_factor",
    "estimate_mi",
    "top_ratio_keep_mask",
    "transition_gradient",
    "version_factors",
    "yin",
]
