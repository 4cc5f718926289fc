"""Backbones that map features to L2-normalised embeddings."""
