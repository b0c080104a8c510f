"""Which backends are installed here, with versions and install hints (``edgeexport doctor``)."""
from __future__ import annotations

import importlib
import importlib.metadata as md

from edgeexport.formats import BACKENDS

_DIST = {"onnxsim": "onnxsim", "onnxruntime": "onnxruntime", "torch": "torch", "onnx": "onnx",
         "onnxscript": "onnxscript", "coremltools": "coremltools", "executorch": "executorch",
         "tensorrt": "tensorrt", "onnxconverter_common": "onnxconverter-common"}


def _version(module: str) -> str | None:
    try:
        return md.version(_DIST.get(module, module))
    except md.PackageNotFoundError:
        return None


def installed_versions() -> dict[str, str | None]:
    return {name: _version(module) for name, (module, _) in BACKENDS.items()}


def check_backend(name: str) -> dict:
    module, hint = BACKENDS[name]
    version = _version(module)
    status, reason = "available", ""
    if version is None:
        status, reason = "missing", f"{module} is not installed"
    else:
        try:
            from edgeexport.util import quiet

            with quiet():  # coremltools / executorch print warnings at import
                importlib.import_module("executorch.runtime" if module == "executorch" else module)
        except Exception as exc:  # installed but broken (e.g. missing shared libraries, PyPI stub)
            status, reason = "broken", f"import {module} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    probe = _RUNTIME_PROBES.get(name)
    if status == "available" and probe is not None:
        ok, why = probe()
        if not ok:
            status, reason = "installed, cannot run here", why
    return {"backend": name, "status": status, "version": version, "reason": reason,
            "install": hint if status in ("missing", "broken") else ""}


def _coreml_probe():
    from edgeexport.runners.coreml import CoreMLRunner

    return CoreMLRunner.availability()


def _tensorrt_probe():
    from edgeexport.export.tensorrt import tensorrt_available

    return tensorrt_available()


_RUNTIME_PROBES: dict = {"coremltools": _coreml_probe, "tensorrt": _tensorrt_probe}


def doctor() -> list[dict]:
    return [check_backend(name) for name in BACKENDS]
