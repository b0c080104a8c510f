"""CoreML ML programs (``NAME.mlpackage``) with coremltools.

Conversion goes through ``torch.export`` where coremltools accepts the exported program,
and falls back to TorchScript tracing otherwise (the report says which). Weight
compression uses coremltools' optimize APIs (linear int8 quantization or k-means
palettization). coremltools converts on Linux but predicts only on macOS; off macOS the
package is still validated (it loads, inputs and outputs have the expected names and
shapes, its op set is listed).
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import torch

from edgeexport.errors import BackendMissing, EdgeExportError
from edgeexport.util import quiet

INSTALL_HINT = "pip install 'edgeexport[coreml]'"
COMPRESSIONS = ("none", "int8", "palettize4", "palettize6")


class CoreMLConversionFailed(EdgeExportError):
    pass


def require_coremltools():
    try:
        with quiet():
            import coremltools as ct  # noqa: F401
    except ImportError:
        raise BackendMissing("coremltools", "coremltools is not installed", INSTALL_HINT) from None


def _failing_op(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Unsupported fx node", "PyTorch convert function for op", "op '", "Op "):
        if marker in text:
            return text[text.index(marker):].splitlines()[0][:200]
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def convert(module: torch.nn.Module, sample: torch.Tensor, out: Path, *, input_name: str, output_names: list[str],
            precision: str = "fp16", compress: str = "none", deployment_target: str = "iOS17") -> dict:
    """Convert ``module`` (returning a tuple) to ``out`` (an .mlpackage folder), atomically."""
    require_coremltools()
    import coremltools as ct

    from edgeexport.util import atomic_path

    target = getattr(ct.target, deployment_target, None)
    if target is None:
        raise EdgeExportError(f"unknown deployment target {deployment_target!r}")
    t0 = time.perf_counter()
    kw = dict(inputs=[ct.TensorType(name=input_name, shape=tuple(sample.shape))],
              outputs=[ct.TensorType(name=n) for n in output_names], convert_to="mlprogram",
              minimum_deployment_target=target,
              compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)
    route, errors = None, []
    with quiet():
        for route in ("torch.export", "trace"):
            try:
                if route == "torch.export":
                    program = torch.export.export(module, (sample,)).run_decompositions({})
                    mlmodel = ct.convert(program, **{k: v for k, v in kw.items() if k != "inputs"})
                else:
                    traced = torch.jit.trace(module, (sample,), check_trace=False)
                    mlmodel = ct.convert(traced, **kw)
                break
            except Exception as exc:
                errors.append(f"{route}: {_failing_op(exc)}")
        else:
            raise CoreMLConversionFailed("coremltools could not convert the model; " + " | ".join(errors))
        if compress == "int8":
            import coremltools.optimize.coreml as cto

            cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric",
                                                                                  dtype="int8"))
            mlmodel = cto.linear_quantize_weights(mlmodel, config=cfg)
        elif compress.startswith("palettize"):
            import coremltools.optimize.coreml as cto

            cfg = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans",
                                                                             nbits=int(compress[len("palettize"):])))
            mlmodel = cto.palettize_weights(mlmodel, config=cfg)
        with atomic_path(out, suffix=".mlpackage") as tmp:
            mlmodel.save(str(tmp))
    info = {"route": route, "fallback_reasons": errors, "precision": precision, "compress": compress,
            "deployment_target": deployment_target, "coremltools": ct.__version__,
            "convert_s": round(time.perf_counter() - t0, 1)}
    info.update(inspect_package(out, input_name, tuple(sample.shape), output_names))
    return info


def inspect_package(path: Path, input_name: str, shape, output_names: list[str]) -> dict:
    """Validate a package without predicting: inputs / outputs as expected, and the op set used."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    inputs = {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input}
    outputs = [o.name for o in spec.description.output]
    problems = []
    if list(inputs) != [input_name]:
        problems.append(f"inputs are {list(inputs)}, expected [{input_name!r}]")
    elif inputs[input_name] != list(shape):
        problems.append(f"input shape {inputs[input_name]} != {list(shape)}")
    if outputs != list(output_names):
        problems.append(f"outputs are {outputs}, expected {list(output_names)}")
    ops: Counter = Counter()
    if spec.WhichOneof("Type") == "mlProgram":
        for fn in spec.mlProgram.functions.values():
            for block in fn.block_specializations.values():
                for op in block.operations:
                    ops[op.type] += 1
    return {"spec_version": spec.specificationVersion, "inputs": inputs, "outputs": outputs,
            "ops": dict(ops.most_common()), "validation_problems": problems}
