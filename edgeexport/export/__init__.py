"""Artifact builders, one module per target format."""
