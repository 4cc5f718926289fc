"""csi_training: frontends, datasets, the rendered-versions corpus, models, losses, metrics and the trainer.

Subpackages (each module has one job):

- ``frontends``: waveform → CQT / log-mel / chroma as conv-based torch modules (ONNX-exportable).
- ``data``: CSV manifests, real dataset layouts (Covers80, SHS100K, Da-TACOS), audio decoding.
- ``render``: music21 scores → note events → rendered "versions" (fast synth, FluidSynth).
- ``models``: backbones (CQTNet-style).
- ``losses``: triplet loss with online mining, classification head.
- ``baselines``: classical CSI baselines (2D Fourier-magnitude, essentia Qmax).
- ``metrics``: MAP, P@10, MR1, MRR, Top-k (leave-one-out, exact full rankings in float32 blocks).
"""
