"""The target registry: every backend is one registered :class:`~edgeexport.targets.base.Target`.

>>> from edgeexport.targets import get_target, list_targets
>>> [t.name for t in list_targets()]
['onnx', 'quantize', 'trt', 'coreml', 'executorch', 'litert', 'ncnn', 'openvino']

The recipe's stages, the CLI's per-target commands, ``doctor``, the format table and bundle
verification all iterate over this registry. Adding a backend means one file in this package
(its target, found by package discovery in :mod:`edgeexport.targets.registry`), its test file and
one line of optional dependencies. Target files import only :mod:`~edgeexport.targets.base`,
:mod:`~edgeexport.targets.registry` and the layers below (never the pipeline, never each other).
"""
from __future__ import annotations

from edgeexport.targets.base import (  # noqa: F401
    Artifact,
    Availability,
    BuildContext,
    BuildRecord,
    Format,
    Repair,
    RepairStep,
    Requirement,
    RunnerOptions,
    RunnerSpec,
    Target,
    TargetOptions,
)
from edgeexport.targets.registry import (  # noqa: F401
    all_formats,
    checked_spec,
    format_for_path,
    get_target,
    list_targets,
    make_runner,
    options_for_kind,
    register_target,
    target_for_kind,
    target_modules,
)

__all__ = ["Artifact", "Availability", "BuildContext", "BuildRecord", "Format", "Requirement", "RunnerOptions", "RunnerSpec", "Target",
           "TargetOptions", "all_formats", "format_for_path", "get_target", "list_targets", "make_runner",
           "options_for_kind", "register_target", "target_for_kind", "target_modules", "checked_spec", "load_in_child"]
from edgeexport.targets.probe import load_in_child  # noqa: E402,F401
