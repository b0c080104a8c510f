"""Deterministic synthetic weights keyed by parameter name (numpy only, so any torch
version, with or without torchvision/timm, produces the same tensors)."""
from __future__ import annotations

import math
import zlib

import numpy as np


def synthetic_state_dict(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, np.ndarray]:
    out = {}
    for key, shape in shapes.items():
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        leaf = key.rsplit(".", 1)[-1]
        prefix = key[: -len(leaf)]
        if leaf == "num_batches_tracked":
            out[key] = np.array(0, dtype=np.int64)
        elif leaf == "running_mean":
            out[key] = np.zeros(shape, np.float32)
        elif leaf == "running_var":
            out[key] = np.ones(shape, np.float32)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            out[key] = (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)
        elif leaf == "weight" and f"{prefix}running_mean" in shapes:
            out[key] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[key] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
    return out
