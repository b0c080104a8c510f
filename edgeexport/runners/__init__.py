"""Runners: the interface every backend implements, and the eager PyTorch reference.

The runner of each exported artifact lives with its target (``edgeexport/targets/<name>.py``);
:func:`edgeexport.targets.make_runner` builds one from a serialisable runner spec and imports
only that backend, so a missing optional runtime disables only its own target.
"""
from __future__ import annotations

from edgeexport.runners.base import Runner

__all__ = ["Runner"]
