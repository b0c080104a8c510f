"""Load a reference fixture (tests/fixtures/*.npz) and rebuild its checkpoint without torchvision/timm."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tests.support.synthetic import synthetic_state_dict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


class Reference:
    def __init__(self, name: str):
        with np.load(FIXTURES / f"{name}.npz") as z:
            self.manifest: dict[str, list[int]] = json.loads(str(z["manifest"]))
            self.images: list[str] = json.loads(str(z["images"]))
            self.inputs = z["inputs"]
            self.outputs = z["outputs"]
            self.bn = {k[3:]: z[k] for k in z.files if k.startswith("bn/")}

    def state_dict(self) -> dict[str, torch.Tensor]:
        arrays = synthetic_state_dict(self.manifest)
        arrays.update(self.bn)
        return {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}

    def save_checkpoint(self, path: Path, wrap: str | None = None) -> Path:
        sd = self.state_dict()
        torch.save({wrap: sd, "epoch": 3} if wrap else sd, path)
        return path
