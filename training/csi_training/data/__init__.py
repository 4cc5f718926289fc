"""Manifests, real dataset layouts and audio decoding."""
