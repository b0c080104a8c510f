"""Export a module with the TorchScript exporter and compare ONNX Runtime with eager, output by output.

A quick structural check for zoo tests (dynamic H/W, named outputs). It is not the pipeline's export
(dynamo exporter, opset 18, onnxsim): tests of that path go through ``edgeexport.pipeline`` or the CLI.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from edgeexport.runners.onnxruntime import OnnxRuntimeRunner
from edgeexport.source import NamedOutputs


def export_named(model, output_names, kind, path: Path, hw, dynamic_hw: bool = True) -> NamedOutputs:
    """TorchScript exporter, opset 17, input ``input``, optional dynamic H/W; returns the wrapped eager model."""
    wrapped = NamedOutputs(model, list(output_names), kind).eval()
    axes = {"input": {2: "height", 3: "width"}} if dynamic_hw else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (torch.randn(1, 3, *hw),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=list(output_names), dynamic_axes=axes)
    return wrapped


def max_rel_errors(wrapped: NamedOutputs, path: Path, sizes, seed: int = 0) -> dict:
    """{(h, w): {name: max|onnx - eager| / max|eager|}} at every size (shapes must agree)."""
    g = torch.Generator().manual_seed(seed)
    result = {}
    with OnnxRuntimeRunner(path, threads=2) as run:
        for hw in sizes:
            x = torch.randn(1, 3, *hw, generator=g)
            with torch.no_grad():
                ref = [t.numpy() for t in wrapped(x)]
            got = run.infer({"input": x.numpy()})
            errs = {}
            for name, r in zip(wrapped.output_names, ref):
                assert got[name].shape == r.shape, (hw, name, got[name].shape, r.shape)
                errs[name] = float(np.abs(got[name] - r).max() / max(np.abs(r).max(), 1e-12))
            result[tuple(hw)] = errs
    return result


def assert_onnx_matches(model, output_names, kind, tmp_path: Path, export_hw, other_hws=(), tol: float = 1e-4,
                        extra_rewrites=()):
    """Rewrite a copy (``adaptive_pool`` + ``extra_rewrites``), export it at ``export_hw`` (dynamic H/W when
    ``other_hws`` is given) and compare ONNX Runtime with the *original* eager model at every size."""
    from edgeexport.rewrite import apply_rewrites

    exported, _ = apply_rewrites(model, ["adaptive_pool"])
    for rewrite in extra_rewrites:
        rewrite(exported)
    path = Path(tmp_path) / "model.onnx"
    export_named(exported, output_names, kind, path, export_hw, dynamic_hw=bool(other_hws))
    reference = NamedOutputs(model, list(output_names), kind).eval()
    errors = max_rel_errors(reference, path, [tuple(export_hw), *map(tuple, other_hws)])
    worst = max(e for errs in errors.values() for e in errs.values())
    assert worst <= tol, errors
    return errors
