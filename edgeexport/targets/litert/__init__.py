"""LiteRT (TensorFlow Lite) flatbuffers (``NAME.tflite``, ``NAME.int8.tflite``) converted from the
PyTorch model with litert-torch, and their runner (the LiteRT interpreter with its default XNNPACK
delegate, on the same thread count as every other backend).

fp32: ``litert_torch.convert`` (``torch.export`` -> StableHLO -> TFLite ops). The input stays
NCHW float32 (the converter puts a TRANSPOSE to NHWC inside the graph).

Names: the module is converted behind a small wrapper that takes the input by its edgeexport name
and returns a dict keyed by the output names, so the file's signature carries edgeexport's names.
The converter orders a signature's outputs by name, not in the model's tuple order, so the runner
goes through the signature runner and maps by name; a file with litert-torch's positional names
(``args_0``, ``output_0``, ...: converted without the wrapper) is mapped by position, which is the
torch tuple order.

int8: ai-edge-quantizer's static int8 (int8 per-channel weights, int8 activations) over the fp32
file, calibrated on the calibration images with min/max ranges; input and output stay float32, so
the int8 file is a drop-in replacement for the fp32 one. Op types that XNNPACK cannot run in int8
(HARD_SWISH in ai-edge-litert 2.3) are found by delegating the quantized file and kept in float:
left int8 they run on the interpreter's own kernels between 20 XNNPACK partitions, and the int8
file is slower than the fp32 one (1.7x on LR-ASPP 520x520, 9x on MobileNetV3-Small). litert-torch's
own PT2E path (``PT2EQuantizer`` + ``quant_config``) also converts, with that HardSwish problem,
int8 input tensors, 20-90 s more per build, and similar accuracy (LR-ASPP 520: 17.5 dB SNR against
16.0 here; MobileNetV3-Small 224: 17.2 against 20.2, untrained weights). A full-integer file (int8
input / output) from elsewhere still runs here: the runner quantizes the input and dequantizes the
outputs with the tensors' own scale and zero point.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgeexport.errors import BackendMissing, BuildFailed, EdgeExportError, UnsupportedOp
from edgeexport.provenance import locate_in_torch, refused_op
from edgeexport.runners.base import Runner, Tap
from edgeexport.targets.registry import register_target
from edgeexport.targets.litert.flatbuffer import (SIGNATURE, delegation, float_scopes, inspect_flatbuffer,
                                                quiet_fds, tensor_modules)
from edgeexport.targets.base import (Budget, Equalize, FloatModules, Availability, BuildRecord, Format, Target,
                                     TargetOptions, int8_model)
from edgeexport.util import quiet, version_of

INSTALL_HINT = "pip install 'edgeexport[litert]'"
_POSITIONAL = re.compile(r"^(args|output)_(\d+)$")


class LiteRTConversionFailed(EdgeExportError):
    def __init__(self, message: str, op: str | None = None):
        super().__init__(message)
        self.op = op  # the operator the converter has no lowering / legalization for, when that is the failure


# how litert-torch and its MLIR converter say that they cannot take an operator
REFUSALS = (r"Lowering not found: ([\w.]+)", r"failed to legalize operation '([\w.]+)'")


def require_litert_torch():
    try:
        with quiet(), quiet_fds():  # TensorFlow's import logs
            import litert_torch  # noqa: F401
    except ImportError:
        raise BackendMissing("LiteRT", "litert-torch is not installed", INSTALL_HINT) from None


def _failure(stage: str, exc: Exception, native: str = "") -> str:
    """One line naming what failed: the op without a lowering, else the first line of the error."""
    text = str(exc).strip()
    m = re.search(r"Lowering not found: ([\w.]+)", text)
    if m:
        op = re.sub(r"\.(default|Tensor|Scalar|int)$", "", m.group(1))
        return f"LiteRT {stage} failed: litert-torch has no lowering for {op} ({m.group(1)})"
    m = re.search(r"failed to legalize operation '([^']+)'", text + "\n" + native)
    if m:
        return f"LiteRT {stage} failed: the converter cannot legalize {m.group(1)}"
    first = text.splitlines()[0][:300] if text else ""
    return f"LiteRT {stage} failed: {type(exc).__name__}{': ' + first if first else ''}"


def _named(module, input_names: list[str], output_names: list[str]):
    """``module`` (positional input, tuple or tensor output) as a module taking the inputs by name and
    returning a dict keyed by the output names: the flatbuffer signature then carries edgeexport's names."""
    import torch

    class Named(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, **inputs):
            out = self.inner(*(inputs[n] for n in input_names))
            return dict(zip(output_names, (out,) if isinstance(out, torch.Tensor) else out))

    named = Named()
    named.training = False  # not .eval(): an exported (PT2E) module refuses train() / eval()
    return named


def _exact_nearest(module, kwargs: dict):
    """``module`` with every nearest resize at a non-integer scale replaced by two index selects, and
    how many were replaced.

    litert-torch emits PyTorch's ``nearest`` resize as TFLite's RESIZE_NEAREST_NEIGHBOR, which picks
    source pixels with half-pixel centres (PyTorch's ``nearest-exact``). The two agree at integer
    scales; at others (SCNet's 14 -> 3 -> 14 at 224x224) they pick different rows and the converted
    model is off by 4-9% of the logit scale. The indices PyTorch would use are computed here by
    running the op itself on a grid of row / column numbers."""
    import torch

    aten = torch.ops.aten
    gm = torch.export.export(module, (), kwargs).module()
    replaced = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (aten.upsample_nearest2d.vec,
                                                              aten.upsample_nearest2d.default):
            continue
        (ih, iw), (oh, ow) = node.args[0].meta["val"].shape[-2:], node.meta["val"].shape[-2:]
        if oh % ih == 0 and ow % iw == 0:
            continue
        grid = torch.stack(torch.meshgrid(torch.arange(ih), torch.arange(iw), indexing="ij")).float()[None]
        picked = node.target(grid, *node.args[1:], **node.kwargs)[0].round().long()  # (2, oh, ow)
        value = node.args[0]
        with gm.graph.inserting_before(node):
            for dim, index in ((2, picked[0, :, 0]), (3, picked[1, 0, :])):
                name = f"_litert_nearest_{replaced}_{dim}"
                gm.register_buffer(name, index.contiguous())
                value = gm.graph.call_function(aten.index_select.default, (value, dim, gm.graph.get_attr(name)))
        node.replace_all_uses_with(value)
        gm.graph.erase_node(node)
        replaced += 1
    if replaced:
        gm.graph.lint()
        gm.recompile()
    return (gm if replaced else module), replaced


def convert_fp32(module, sample, input_names: list[str], output_names: list[str]) -> tuple[bytes, int]:
    """The fp32 flatbuffer of ``module`` (a torch module returning a tuple in ``output_names`` order),
    and how many nearest resizes were made exact (see :func:`_exact_nearest`)."""
    require_litert_torch()
    import litert_torch

    litert_torch.config.show_progress = False
    kwargs = {input_names[0]: sample}
    with quiet(), quiet_fds() as native:
        try:
            named, exact = _exact_nearest(_named(module, input_names, output_names), kwargs)
        except Exception as exc:
            raise LiteRTConversionFailed(_failure("torch.export", exc, native()),
                                         refused_op(str(exc) + "\n" + native(), REFUSALS)) from exc
        try:
            return litert_torch.convert(named, sample_kwargs=kwargs).model_content(), exact
        except Exception as exc:
            raise LiteRTConversionFailed(_failure("conversion", exc, native()),
                                         refused_op(str(exc) + "\n" + native(), REFUSALS)) from exc


def _recipe(float_ops=(), float_scopes=()):
    """ai-edge-quantizer's static int8 recipe (int8 per-channel weights, int8 activations), with the
    model's input and output tensors, ``float_ops`` (op types) and the ops of ``float_scopes`` (their scopes:
    output tensor names, which the recipe's regexes match) left in float."""
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    rm = recipe_manager.RecipeManager()
    rm.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8)
    for op in ("INPUT", "OUTPUT", *float_ops):
        rm.add_quantization_config(".*", qtyping.TFLOperationName(op), algorithm_key=AlgorithmName.NO_QUANTIZE)
    if float_scopes:  # added last: the recipe's latest matching regex wins
        rm.add_quantization_config("^(?:" + "|".join(re.escape(s) for s in sorted(float_scopes)) + ")$",
                                   qtyping.TFLOperationName.ALL_SUPPORTED, algorithm_key=AlgorithmName.NO_QUANTIZE)
    return rm


def quantize_int8(fp32: bytes, input_name: str, calibration: list[np.ndarray],
                  threads: int | None, scopes=()) -> tuple[bytes, list[str]]:
    """Static int8 of an fp32 flatbuffer with ai-edge-quantizer; returns the file and the op types kept
    in float because XNNPACK cannot run them in int8. ``scopes``: ops kept in float by the user (see
    :func:`float_scopes`).

    Ranges are min/max over all calibration batches (ai-edge-quantizer's default, a moving average
    of per-batch ranges, clips: 2.8 dB SNR on MobileNetV3-Small against 20 dB). Input and output
    stay float. An op type XNNPACK refuses in int8 (int8 HARD_SWISH in ai-edge-litert 2.3) would run
    on the interpreter's slow reference kernels and split the graph into many delegate partitions
    (9x slower than fp32 on MobileNetV3-Small), so it is kept in float and the file quantized again; so is
    an op type whose int8 kernel refuses how ai-edge-quantizer quantized it (AlexNet's FULLY_CONNECTED weights
    quantized per channel on their second axis: "quantized_dimension != 0", ai-edge-quantizer 0.10).
    """
    with quiet(), quiet_fds() as native:
        from ai_edge_quantizer import calibrator, qtyping, quantizer
        from ai_edge_quantizer.utils import qsv_utils

        try:
            cal = calibrator.Calibrator(fp32, num_threads=threads or 1, qsv_update_func=qsv_utils.min_max_update)
            cal.calibrate({SIGNATURE: [{input_name: np.ascontiguousarray(b, np.float32)} for b in calibration]},
                          _recipe())
            qsvs = cal.get_model_qsvs()

            def quantize(float_ops=()):
                q = quantizer.Quantizer(bytearray(fp32), _recipe(float_ops, scopes).get_quantization_recipe())
                return bytes(q.quantize(qsvs, enable_progress_bar=False, enable_progress_report=False).quantized_model)

            content, keep = quantize(), []
            known = {op.value for op in qtyping.TFLOperationName}
            baseline = set(delegation(fp32)[1])
            for _ in range(4):
                try:
                    refused = set(delegation(content)[1]) - baseline
                except RuntimeError as exc:  # a kernel that cannot take how an op was quantized
                    m = re.search(r"\((\w+)\) failed to prepare", str(exc))
                    if not m or m.group(1) not in known or m.group(1) in keep:
                        raise
                    refused = {m.group(1)}
                new = sorted(op for op in refused if op in known and op not in keep)
                if not new:
                    break
                keep = sorted({*keep, *new})
                content = quantize(keep)
        except Exception as exc:
            raise LiteRTConversionFailed(_failure("int8 quantization", exc, native()),
                                         refused_op(str(exc) + "\n" + native(), REFUSALS)) from exc
    return content, keep


# ---------------------------------------------------------------- runner


def io_map(signature_names: list[str], names: list[str], what: str) -> dict[str, str]:
    """edgeexport name -> signature name: by name when the signature carries edgeexport's names, by
    position when it has litert-torch's positional names (``args_0`` / ``output_0``: tuple order)."""
    if sorted(signature_names) == sorted(names):
        return {n: n for n in names}
    positional = sorted(((int(m.group(2)), s) for s in signature_names if (m := _POSITIONAL.match(s))))
    if len(positional) == len(signature_names) == len(names) \
            and [i for i, _ in positional] == list(range(len(names))):
        return {n: s for n, (_, s) in zip(names, positional)}
    raise EdgeExportError(f"the .tflite signature's {what} {signature_names} do not match {names}")


class LiteRTRunner(Runner):
    backend = "litert"

    def __init__(self, path: str | Path, threads: int | None = None, input_names=("input",), output_names=()):
        super().__init__(threads)
        self.path = Path(path)
        self._inputs, self._outputs = list(input_names), list(output_names)

    def _activate(self) -> None:
        from ai_edge_litert import interpreter as tfl

        with quiet_fds():  # the XNNPACK delegate announces itself on stderr
            self.interpreter = tfl.Interpreter(model_path=str(self.path), num_threads=self.threads)
            signatures = self.interpreter.get_signature_list()
            key = SIGNATURE if SIGNATURE in signatures else next(iter(signatures))
            self.signature = self.interpreter.get_signature_runner(key)
        ins, outs = self.signature.get_input_details(), self.signature.get_output_details()
        if not self._outputs:
            self._outputs = sorted(outs, key=lambda s: int(m.group(2)) if (m := _POSITIONAL.match(s)) else 0)
        self._in = io_map(list(ins), self._inputs, "inputs")
        self._out = io_map(list(outs), self._outputs, "outputs")
        self._in_q = {n: (np.dtype(ins[s]["dtype"]), *ins[s]["quantization"]) for n, s in self._in.items()}
        self._out_q = {n: (np.dtype(outs[s]["dtype"]), *outs[s]["quantization"]) for n, s in self._out.items()}

    def _args(self, feed) -> dict:
        """The signature's arguments for named inputs (a full-integer model: quantized like its first op would)."""
        args = {}
        for n, s in self._in.items():
            x = np.ascontiguousarray(feed[n], np.float32)
            dtype, scale, zp = self._in_q[n]
            if dtype != np.float32 and scale:
                info = np.iinfo(dtype)
                x = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(dtype)
            args[s] = x
        return args

    def _infer(self, feed):
        outs = self.signature(**self._args(feed))
        result = {}
        for n, s in self._out.items():
            dtype, scale, zp = self._out_q[n]
            y = outs[s]
            result[n] = ((y.astype(np.float32) - zp) * scale if dtype != np.float32 and scale
                         else y.astype(np.float32, copy=False))
        return result

    def _deactivate(self) -> None:
        self.signature = self.interpreter = None

    def _taps(self, feed):
        """Every op's output, from an interpreter that keeps all tensors. XNNPACK replaces the ops it delegates by
        one opaque node, so this interpreter runs LiteRT's built-in kernels instead (the same graph and
        quantization; fp32 sums may be ordered differently). int8 tensors are dequantized."""
        from ai_edge_litert import interpreter as tfl

        with quiet_fds():
            it = tfl.Interpreter(model_path=str(self.path), num_threads=self.threads,
                                 experimental_preserve_all_tensors=True,
                                 experimental_op_resolver_type=tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        signatures = it.get_signature_list()
        runner = it.get_signature_runner(SIGNATURE if SIGNATURE in signatures else next(iter(signatures)))
        runner(**self._args({n: feed[n][:1] for n in self._in}))
        details = {d["index"]: d for d in it.get_tensor_details()}
        taps = []
        for op in it._get_ops_details():
            if len(op["outputs"]) != 1 or op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
                continue
            d = details[int(op["outputs"][0])]
            a = it.get_tensor(d["index"])
            scale, zp = d["quantization"]
            if a.dtype != np.float32:
                if not scale:
                    continue  # an integer tensor (shapes, indices), not an activation
                a = (a.astype(np.float32) - zp) * scale
            modules = tensor_modules(d["name"])
            taps.append(Tap(d["name"], modules[0] if modules else None, op["op_name"], np.array(a, np.float32),
                            layout="nhwc", alternatives=tuple(modules[1:])))
        return taps

    def describe(self) -> dict:
        from importlib.metadata import version

        return {**super().describe(), "runtime": f"ai-edge-litert {version('ai-edge-litert')}",
                "device": "cpu (xnnpack)", "artifact": str(self.path)}


# ---------------------------------------------------------------- the target


class LiteRTOptions(TargetOptions):
    quantize: Literal["none", "int8"] = Field("none", description="int8: static int8 (ai-edge-quantizer), "
                                                                  "float input and output")
    calib_size: int = Field(8, ge=1, le=1024, description="calibration batches")
    float_modules: FloatModules = Field(default_factory=list, description="int8: module of the model to keep in float "
                                     "(an ai-edge-quantizer recipe entry for its ops), by its path as `edgeexport "
                                     "diff` names it (repeatable)", json_schema_extra={"flag": "--float-module"})
    budget: Budget = Field(
        None, description="int8 accuracy budget (miou_drop=0.5, top1_drop=0.5, snr_db=25, agreement=0.99): the "
                          "smallest set of modules kept in float that meets it is searched", json_schema_extra={"parse": "budget"})
    equalize: Equalize = "auto"


class LiteRTRecord(BuildRecord):
    quantize: str
    path: str  # how it was made
    litert_torch: str | None
    ai_edge_litert: str | None
    ai_edge_quantizer: str | None = None
    convert_s: float
    exact_nearest_resizes: int = 0  # nearest resizes at non-integer scales made exact (index selects)
    fp32_from: str | None = None  # the int8 file quantizes this run's fp32 file (not converted again)
    quantize_s: float | None = None
    calib_size: int | None = None
    kept_float_for_xnnpack: list[str] = []  # op types XNNPACK refuses in int8, left in float
    float_modules: dict[str, list[str]] = {}  # module kept in float -> its ops (type#index)
    float_tensors: dict[str, list[str]] = {}  # module kept in float -> the tensors it reads, left float
    inputs: dict[str, str]  # signature name -> dtype (and quantization)
    outputs: dict[str, str]
    op_count: int
    ops: dict[str, int]
    int8_ops: int  # ops computing on int8 tensors (QUANTIZE / DEQUANTIZE not counted)
    float_ops: dict[str, int]
    tensor_dtypes: dict[str, int]
    xnnpack_partitions: int
    outside_xnnpack: dict[str, int] = {}  # op types the interpreter runs itself

    def terminal(self) -> list[str]:
        line = f"LiteRT {self.quantize}: {self.op_count} ops, {self.xnnpack_partitions} XNNPACK partition(s)"
        if self.outside_xnnpack:
            line += f", outside XNNPACK: {self.outside_xnnpack}"
        if self.quantize == "int8":
            line += f"; {self.int8_ops} int8 ops, float: {self.float_ops or 'none'}"
        return [line]


@register_target
class LiteRTTarget(Target):
    name = "litert"
    order = 50
    title = "LiteRT"
    backend = "litert"
    help = "Convert to LiteRT / TFLite (NAME.tflite, NAME.int8.tflite) with litert-torch; parity and latency here."
    Options = LiteRTOptions
    Record = LiteRTRecord
    multiple = True
    formats = (Format(kind="litert", suffix=".tflite", precision="fp32",
                      runs_on="any CPU with the LiteRT / TFLite runtime (XNNPACK)", options={"quantize": "none"}),
               Format(kind="litert-int8", suffix=".int8.tflite", precision="int8",
                      runs_on="any CPU with the LiteRT / TFLite runtime (XNNPACK int8; float input and output)",
                      options={"quantize": "int8"}))
    build_modules = ("litert_torch", "ai_edge_quantizer")
    run_modules = ("ai_edge_litert.interpreter",)
    distributions = {"litert_torch": "litert-torch", "ai_edge_quantizer": "ai-edge-quantizer",
                     "ai_edge_litert.interpreter": "ai-edge-litert"}
    install = INSTALL_HINT
    extra = "litert"

    @classmethod
    def build_availability(cls) -> Availability:
        with quiet_fds():  # importing litert-torch imports TensorFlow, which logs from C++
            return super().build_availability()

    def build(self, ctx, options: LiteRTOptions, art) -> None:
        from edgeexport.util import atomic_path

        int8 = options.quantize == "int8"
        inputs, outputs = [ctx.input_name], list(ctx.output_names)
        facts: dict = {"quantize": options.quantize, "path": "litert_torch.convert",
                       "litert_torch": version_of("litert-torch"), "ai_edge_litert": version_of("ai-edge-litert")}
        t0 = time.perf_counter()
        # this run's fp32 file, when it built one: quantize that (or fail as it did) instead of converting again
        # (not when the int8 file quantizes the equalized copy: that one is converted here)
        equalize = "on" if int8 and options.equalize == "on" else "off"
        fp32 = ctx.find(self.formats[0].kind) if int8 and equalize == "off" else None
        if fp32 is not None and fp32.error is not None:
            raise BuildFailed(fp32.error)
        with ctx.status(f"Converting to LiteRT ({options.quantize})"):
            try:
                if fp32 is not None and fp32.path is not None and fp32.path.exists():
                    content, facts["fp32_from"] = fp32.path.read_bytes(), fp32.path.name
                else:
                    content, facts["exact_nearest_resizes"] = convert_fp32(int8_model(ctx, equalize), ctx.sample(),
                                                                           inputs, outputs)
                facts["convert_s"] = round(time.perf_counter() - t0, 1)
                if int8:
                    art.compare_to = self.formats[0].kind
                    calib = ctx.calibration(options.calib_size)
                    t1 = time.perf_counter()
                    modules, scopes, facts["float_tensors"] = (float_scopes(content, options.float_modules)
                                                               if options.float_modules else ({}, (), {}))
                    content, kept = quantize_int8(content, inputs[0], calib, ctx.threads, scopes)
                    facts["float_modules"] = modules
                    facts.update(path="litert_torch.convert + ai-edge-quantizer static int8 (min/max ranges)",
                                 ai_edge_quantizer=version_of("ai-edge-quantizer"), calib_size=len(calib),
                                 quantize_s=round(time.perf_counter() - t1, 1), kept_float_for_xnnpack=kept)
            except LiteRTConversionFailed as exc:
                if exc.op:
                    raise UnsupportedOp(exc.op, locate_in_torch(ctx.torch_model(), ctx.sample(), exc.op),
                                        str(exc)) from None
                raise BuildFailed(str(exc)) from None
            with atomic_path(art.path) as tmp:
                tmp.write_bytes(content)
            facts.update(inspect_flatbuffer(art.path))
        record = LiteRTRecord(**facts, build_s=round(time.perf_counter() - t0, 1))
        if not int8 and (options.float_modules or options.budget):
            record.notes.append("float modules and budget apply to --quantize int8 only; ignored for the fp32 file")
        if record.kept_float_for_xnnpack:
            record.notes.append(f"kept in float: {', '.join(record.kept_float_for_xnnpack)} (XNNPACK has no int8 "
                                "kernel for them here; in int8 they would run on the interpreter's slow kernels)")
        if record.outside_xnnpack:
            record.notes.append(f"ops outside XNNPACK (run by the interpreter): {record.outside_xnnpack}")
        art.finish(record, ctx.runner_spec(type(self), art.path))

    @classmethod
    def runner(cls, spec, threads):
        return LiteRTRunner(spec.artifact, threads, spec.input_names, spec.output_names)
