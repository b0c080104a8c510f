"""A model whose factory kills its worker process on its first attempts: the matrix's retry tests
(``--model tests.support.crashing:crashing_classifier`` with ``model_kwargs: {control: FILE}``).

``FILE`` holds ``{"crash": N}`` (the first N calls ``os._exit(1)``) or ``{"crash": "always"}``; the calls
are counted in ``FILE.count``, one byte per call, so every worker process sees the same count. The file's
content is not part of a matrix cell's key (its path is), so a test can stop the crashes between runs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.models import tiny_classifier


def crashing_classifier(control: str, num_classes: int = 10):
    state = json.loads(Path(control).read_text())
    with open(f"{control}.count", "ab") as fh:
        fh.write(b".")
        fh.flush()
        calls = fh.tell()
    if state["crash"] == "always" or calls <= int(state["crash"]):
        os._exit(1)  # a worker killed mid-task
    return tiny_classifier(num_classes)
