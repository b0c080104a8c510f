"""CoreML ML programs (``NAME.mlpackage``) with coremltools, and their runner (``MLModel.predict``).

Conversion goes through ``torch.export`` where coremltools accepts the exported program, and
falls back to TorchScript tracing otherwise (the record says which). Weight compression uses
coremltools' optimize APIs (linear int8 quantization or k-means palettization). coremltools
converts on Linux but predicts only on macOS; off macOS the package is still validated (it
loads, inputs and outputs have the expected names and shapes, its op set is listed) and
parity is reported as "not run on this machine". The compute units a package runs on are part
of its runner spec, so a bundle verified on a Mac uses the same ones.
"""
from __future__ import annotations

import platform
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgeexport.errors import BackendMissing, BuildFailed, EdgeExportError, UnsupportedOp
from edgeexport.provenance import locate_in_torch, refused_op, stack_path, user_path
from edgeexport.runners.base import Runner, Tap
from edgeexport.targets.registry import register_target
from edgeexport.targets.base import Availability, BuildRecord, Format, RunnerOptions, Target, TargetOptions
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


# how coremltools says that it cannot take an operator
REFUSALS = (r"convert function for op '([\w.]+)' not implemented", r"Unsupported fx node ([\w.]+)")


def _failing_op(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Unsupported fx node", "PyTorch convert function for op", "op '", "Op "):
        if marker in text:
            return text[text.index(marker):].splitlines()[0][:200]
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _drop_aliases(program):
    """Replace ``aten.alias`` nodes by their input: an alias is the same tensor, and coremltools has no
    converter for it ("Unsupported fx node alias"; Swin's window shift leaves some). Exact."""
    import torch

    graph = program.graph_module.graph
    outputs = {id(a) for a in next(n for n in graph.nodes if n.op == "output").args[0]}
    dropped = 0
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten.alias.default and id(node) not in outputs:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            dropped += 1
    if dropped:
        program.graph_module.recompile()
    return program


MODULE_KEY = "edgeexport_modules"  # the package's user-defined metadata: {MIL op output: module path of the user's model}


def _mil_ops(spec):
    """Every MIL operation of an ML program package (none for a neural network package)."""
    if spec.WhichOneof("Type") == "mlProgram":
        for fn in spec.mlProgram.functions.values():
            for block in fn.block_specializations.values():
                yield from block.operations


def _mil_outputs(spec) -> dict[str, str]:
    """Every MIL operation output of a package: name -> operation type."""
    return {o.name: op.type for op in _mil_ops(spec) for o in op.outputs}


def module_map(program, spec) -> dict[str, str]:
    """Which module of the user's model each MIL operation output comes from. coremltools names an operation's
    output after the exported node it converts (a conv with its BatchNorm folded takes the BatchNorm's node);
    each node's ``nn_module_stack`` names the module. Outputs of operations a node was decomposed into
    (``sigmoid_hard_0`` of a hardswish) are not the module's output and get none; an fp16 program's outputs
    are the node's name with ``_cast_fp16``."""
    nodes = {n.name: user_path(path) for n in program.graph.nodes
             if n.op == "call_function" and (path := stack_path(n)) is not None}
    out = {}
    for name, kind in _mil_outputs(spec).items():
        node = name.removesuffix("_cast_fp16")  # an fp16 program's outputs carry their precision cast
        if node in nodes and kind != "const":
            out[name] = nodes[node]
    return out


def recorded_modules(spec) -> dict[str, str]:
    import json

    raw = spec.description.metadata.userDefined.get(MODULE_KEY)
    return json.loads(raw) if raw else {}


def convert(module, sample, out: Path, *, input_name: str, output_names: list[str],
            precision: str = "fp16", compress: str = "none", deployment_target: str = "iOS17") -> dict:
    """Convert ``module`` (a torch module returning a tuple) to ``out`` (an .mlpackage folder), atomically."""
    require_coremltools()
    import coremltools as ct
    import torch

    from edgeexport.util import atomic_path

    target = getattr(ct.target, deployment_target, None)
    if target is None:
        raise EdgeExportError(f"unknown deployment target {deployment_target!r}")
    t0 = time.perf_counter()
    kw = dict(inputs=[ct.TensorType(name=input_name, shape=tuple(sample.shape))],
              outputs=[ct.TensorType(name=n) for n in output_names], convert_to="mlprogram",
              minimum_deployment_target=target,
              compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)
    route, errors, modules = None, [], {}
    with quiet():
        for route in ("torch.export", "trace"):
            try:
                if route == "torch.export":
                    program = _drop_aliases(torch.export.export(module, (sample,)).run_decompositions({}))
                    mlmodel = ct.convert(program, **{k: v for k, v in kw.items() if k != "inputs"})
                    modules = module_map(program, mlmodel.get_spec())
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
        if modules:  # for `diff` on macOS: which module each intermediate tensor comes from
            import json

            mlmodel.user_defined_metadata[MODULE_KEY] = json.dumps(modules, separators=(",", ":"))
        with atomic_path(out, suffix=".mlpackage", replaces=lambda p: (p / "Manifest.json").is_file()) as tmp:
            mlmodel.save(str(tmp))
    info = {"route": route, "fallback_reasons": errors, "precision": precision, "compress": compress,
            "deployment_target": deployment_target, "coremltools": ct.__version__,
            "convert_s": round(time.perf_counter() - t0, 1), "modules_recorded": len(modules)}
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
    ops = Counter(op.type for op in _mil_ops(spec))
    return {"spec_version": spec.specificationVersion, "inputs": inputs, "outputs": outputs,
            "ops": dict(ops.most_common()), "validation_problems": problems}


# ---------------------------------------------------------------- runner


COMPUTE_UNITS = ("cpu_only", "cpu_and_gpu", "all", "cpu_and_ne")


class CoreMLRunner(Runner):
    backend = "coreml"

    def __init__(self, path: str | Path, threads: int | None = None, compute_units: str = "cpu_only"):
        super().__init__(threads)
        self.path, self.compute_units = Path(path), compute_units

    def _activate(self) -> None:
        import coremltools as ct

        units = {"cpu_only": ct.ComputeUnit.CPU_ONLY, "cpu_and_gpu": ct.ComputeUnit.CPU_AND_GPU,
                 "all": ct.ComputeUnit.ALL, "cpu_and_ne": ct.ComputeUnit.CPU_AND_NE}[self.compute_units]
        self.model = ct.models.MLModel(str(self.path), compute_units=units)
        spec = self.model.get_spec()
        self._inputs = [i.name for i in spec.description.input]
        self._outputs = [o.name for o in spec.description.output]

    def _infer(self, feed):
        out = self.model.predict({n: np.ascontiguousarray(feed[n]) for n in self._inputs})
        return {n: np.asarray(out[n], dtype=np.float32) for n in self._outputs}

    def _taps(self, feed):
        """Every MIL operation output for ``feed``, from coremltools' ``MLModelInspector`` (which predicts with
        models that output them; macOS only), attributed by the module map the build recorded."""
        import asyncio

        from coremltools.models.ml_program.experimental.debugging_utils import MLModelInspector

        spec = self.model.get_spec()
        modules, kinds = recorded_modules(spec), _mil_outputs(spec)
        inspector = MLModelInspector(self.model)
        names = [n for n in reversed(inspector.output_names) if kinds.get(n, "const") != "const"]
        inputs = {n: np.ascontiguousarray(feed[n][:1]) for n in self._inputs}

        async def collect():
            return [(n, v) async for n, v in inspector.inspect(inputs=inputs, output_names=names) if v is not None]

        order = {n: i for i, n in enumerate(names)}  # execution order: the diff pairs a module with its last tensor
        got = sorted(asyncio.run(collect()), key=lambda nv: order[nv[0]])
        return [Tap(n, modules.get(n), kinds[n], np.asarray(v, dtype=np.float32)) for n, v in got]

    def _deactivate(self) -> None:
        self.model = None

    def describe(self) -> dict:
        import coremltools as ct

        return {**super().describe(), "runtime": f"coremltools {ct.__version__}", "device": self.compute_units,
                "artifact": str(self.path)}


# ---------------------------------------------------------------- the target


class CoreMLOptions(TargetOptions):
    precision: Literal["fp32", "fp16"] = "fp16"
    compress: Literal["none", "int8", "palettize4", "palettize6"] = "none"
    deployment_target: str = "iOS17"
    compute_units: Literal["cpu_only", "cpu_and_gpu", "all", "cpu_and_ne"] = Field(
        "cpu_only", description="what prediction runs on (macOS); recorded in bundles")


class CoreMLRunnerOptions(RunnerOptions):
    compute_units: Literal["cpu_only", "cpu_and_gpu", "all", "cpu_and_ne"] = "cpu_only"


class CoreMLRecord(BuildRecord):
    route: str
    fallback_reasons: list[str] = []
    precision: str
    compress: str
    deployment_target: str
    coremltools: str
    convert_s: float
    spec_version: int
    inputs: dict[str, list[int]]
    outputs: list[str]
    ops: dict[str, int] = {}
    validation_problems: list[str] = []
    modules_recorded: int = 0  # MIL outputs whose module of the user's model the package records (for `diff`)


@register_target
class CoreMLTarget(Target):
    name = "coreml"
    order = 30
    title = "CoreML"
    backend = "coreml"
    help = "Convert to a CoreML ML program (NAME.mlpackage); parity and latency on macOS, validation elsewhere."
    Options = CoreMLOptions
    runner_options = CoreMLRunnerOptions
    Record = CoreMLRecord
    multiple = True
    formats = (
        Format(folder=True, kind="coreml", suffix=".mlpackage", precision="fp16", runs_on="macOS / iOS (converts anywhere)",
               options={"precision": "fp16", "compress": "none"}),
        Format(folder=True, kind="coreml-fp32", suffix=".fp32.mlpackage", precision="fp32",
               runs_on="macOS / iOS (converts anywhere)", options={"precision": "fp32", "compress": "none"}),
        Format(folder=True, kind="coreml-int8", suffix=".int8.mlpackage", precision="fp16",
               runs_on="macOS / iOS (int8 weights, fp16 compute)", options={"compress": "int8"}),
        Format(folder=True, kind="coreml-palettize4", suffix=".palettize4.mlpackage", precision="fp16",
               runs_on="macOS / iOS (4-bit palettized weights, fp16 compute)", options={"compress": "palettize4"}),
        Format(folder=True, kind="coreml-palettize6", suffix=".palettize6.mlpackage", precision="fp16",
               runs_on="macOS / iOS (6-bit palettized weights, fp16 compute)", options={"compress": "palettize6"}),
    )
    build_modules = ("coremltools",)
    run_modules = ("coremltools",)
    install = INSTALL_HINT
    extra = "coreml"

    @classmethod
    def run_availability(cls) -> Availability:
        if platform.system() != "Darwin":
            return Availability(False, "CoreML prediction needs macOS (coremltools converts on Linux but cannot predict)")
        return super().run_availability()

    def build(self, ctx, options: CoreMLOptions, art) -> None:

        art.precision = options.precision  # compute precision; compression is of the weights
        with ctx.status(f"Converting to CoreML ({options.precision}, compress={options.compress})"):
            try:
                info = convert(ctx.torch_model(), ctx.sample(), art.path, input_name=ctx.input_name,
                               output_names=ctx.output_names, precision=options.precision,
                               compress=options.compress, deployment_target=options.deployment_target)
            except CoreMLConversionFailed as exc:
                op = refused_op(str(exc), REFUSALS)
                if op:
                    raise UnsupportedOp(op, locate_in_torch(ctx.torch_model(), ctx.sample(), op), str(exc)) from None
                raise BuildFailed(str(exc)) from None
        record = CoreMLRecord(**info)
        art.failures += record.validation_problems
        art.finish(record, ctx.runner_spec(type(self), art.path, compute_units=options.compute_units))

    @classmethod
    def runner(cls, spec, threads):
        return CoreMLRunner(spec.artifact, threads, spec.options.get("compute_units", "cpu_only"))
