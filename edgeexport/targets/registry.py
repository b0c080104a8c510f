"""The target registry: every backend is one registered :class:`~edgeexport.targets.base.Target`.

Target files are found by package discovery (every module or sub-package of ``edgeexport.targets``
but this registry and the base): importing one registers its target, and since backend libraries
are imported only inside methods, importing every target file is cheap.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

from edgeexport.errors import BackendMissing, UserError
from pydantic import ValidationError

from edgeexport.targets.base import Format, RunnerSpec, Target, TargetOptions

_PACKAGE, _FOLDER = __name__.rpartition(".")[0], Path(__file__).resolve().parent
_TARGETS: dict[str, type[Target]] = {}
_LOADED = False
NOT_TARGETS = {"base", "registry", "probe"}
# The artifact kinds `edgeexport matrix` builds when none are named (the CLI's and the library's default).
DEFAULT_MATRIX_KINDS = ("onnx", "onnx-int8", "executorch", "coreml")


def register_target(cls: type[Target]) -> type[Target]:
    """Class decorator: register a target under ``cls.name``."""
    if inspect.isabstract(cls):
        raise TypeError(f"target {cls.__name__} does not implement {sorted(cls.__abstractmethods__)}")
    if cls.name in _TARGETS and _TARGETS[cls.name] is not cls:
        raise ValueError(f"target {cls.name!r} registered twice")
    kinds = {f.kind for t in _TARGETS.values() for f in t.formats if t is not cls}
    clash = kinds & {f.kind for f in cls.formats}
    if clash:
        raise ValueError(f"target {cls.name!r} declares artifact kinds another target has: {sorted(clash)}")
    _TARGETS[cls.name] = cls
    return cls


def target_modules() -> list[str]:
    """The module (or sub-package) names of the target files."""
    return sorted(m.name for m in pkgutil.iter_modules([str(_FOLDER)])
                  if m.name not in NOT_TARGETS and not m.name.startswith("_"))


def _ensure_loaded() -> None:
    global _LOADED
    if not _LOADED:
        for m in target_modules():
            importlib.import_module(f"{_PACKAGE}.{m}")
        _LOADED = True


def list_targets() -> list[type[Target]]:
    """Registered targets in report / recipe order (``Target.order``, then name)."""
    _ensure_loaded()
    return sorted(_TARGETS.values(), key=lambda t: (t.order, t.name))


def get_target(name: str) -> type[Target]:
    _ensure_loaded()
    if name not in _TARGETS:
        raise UserError(f"unknown target {name!r} (known: {', '.join(_TARGETS)})")
    return _TARGETS[name]


def all_formats() -> list[tuple[type[Target], Format]]:
    return [(t, f) for t in list_targets() for f in t.formats]


def target_for_kind(kind: str) -> tuple[type[Target], Format]:
    for t, f in all_formats():
        if f.kind == kind:
            return t, f
    raise UserError(f"unknown artifact kind {kind!r} (known: {', '.join(f.kind for _, f in all_formats())})")


def options_for_kind(kind: str) -> tuple[type[Target], TargetOptions]:
    """The target and the stage options that build an artifact kind (``Format.options`` over the
    defaults), e.g. ``"onnx-int8"`` -> (quantize, mode=int8), ``"coreml"`` -> (coreml, precision=fp16)."""
    target, fmt = target_for_kind(kind)
    return target, target.Options(**fmt.options)


def format_for_path(path: str) -> tuple[type[Target], Format] | None:
    """The target and format of an artifact file, by its name (the longest matching suffix wins)."""
    name = str(path).rstrip("/")
    matches = [(t, f) for t, f in all_formats() if name.endswith(f.suffix)]
    return max(matches, key=lambda tf: len(tf[1].suffix)) if matches else None


def make_runner(spec: RunnerSpec, threads: int | None):
    """The runner a spec describes (imports only that target's runtime); a runtime this machine lacks
    is a one-line :class:`~edgeexport.errors.BackendMissing` with the target's install hint."""
    spec = checked_spec(spec)
    target = get_target(spec.target)
    ok, reason = target.run_availability()
    if not ok:
        raise BackendMissing(target.title, reason, target.install)
    return target.runner(spec, threads)


def checked_spec(spec: RunnerSpec) -> RunnerSpec:
    """``spec`` with its options validated by its target's ``runner_options`` (only the keys it sets are kept,
    so a runner still tells "not given" from a default); a bad option is a one-line :class:`UserError`."""
    target = get_target(spec.target)
    try:
        opts = target.runner_options.model_validate(spec.options)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "options"
        raise UserError(f"{target.title} runner option {where[:60]!r}: {err['msg'][:160]}") from None
    return spec.model_copy(update={"options": opts.model_dump(exclude_unset=True)})
