"""Waveform → time-frequency features as torch modules that export to ONNX with plain ops."""
