"""ncnn models (``NAME.ncnn.param`` + ``NAME.ncnn.bin``) converted with pnnx, and their runner
(ncnn's Python binding, CPU, one extractor per inference).

Conversion: the model is traced (``torch.jit.trace``, at batch 1: ncnn blobs have no batch axis)
and handed to the pnnx executable in a temporary folder; of everything pnnx writes there (its own
pnnx.param / .bin / .py / .onnx, the ncnn .py, the trace) only the ncnn param / bin pair is kept,
both written to temporaries and then renamed. pnnx leaves operators ncnn has no layer for in the
param file under their PyTorch names (``aten::erfinv``, ``torch.topk``, ``pnnx.Expression``...);
the build fails on those, naming them, instead of writing a model ncnn cannot load. The model is
traced with this target's own rewrites (default: HetConv in its dense form), not the ONNX ones: ncnn
has adaptive pooling layers, and the masked max-pooling rewrite leaves ``torch.where``, which it lacks.

Precision: pnnx stores weights in fp16 unless told otherwise, and a MobileNetV3 then differs from
eager by about 1e-3 of the logit scale even with ncnn's fp16 paths off. The fp32 artifact is
therefore written with ``fp16=0`` and run with ``use_fp16_storage`` / ``use_fp16_packed`` /
``use_fp16_arithmetic`` off (1e-6..1e-7 of the logit scale). ``precision: fp16`` writes fp16 weights
(``NAME.fp16.ncnn.param`` / ``.bin``, half the size) and runs with those three options on. The
options are part of the runner spec, so a bundle runs the model as the build host did.

int8 is not offered: it needs ncnn's ncnn2table / ncnn2int8 tools (calibration table, then int8
weights and scales), which the pip wheels do not ship (the ``ncnn`` wheel has the runtime only and
the ``pnnx`` wheel the converter).

Inputs and outputs: pnnx names the blobs ``in0, in1, ...`` and ``out0, out1, ...`` in argument and
output order; the build reads them from the param file and records the mapping to edgeexport's
input / output names in the runner spec. A batch of N runs as N single items whose outputs are
stacked, so every output has eager's shape (NCHW maps, (N, classes) logits).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, StringConstraints

from edgeexport.errors import BackendMissing, BuildFailed, EdgeExportError, UnsupportedOp
from edgeexport.provenance import locate_in_torch
from edgeexport.runners.base import Runner
from edgeexport.targets.registry import register_target
from edgeexport.targets.base import BuildRecord, Format, RunnerOptions, Target, TargetOptions
from edgeexport.util import native_stderr, quiet, version_of

INSTALL_HINT = "pip install 'edgeexport[ncnn]'"
FP16_OPTIONS = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic")
# ncnn has adaptive pooling layers, so the ONNX pooling rewrites are not wanted (the masked max
# pooling leaves torch.where, which ncnn lacks); HetConv's grouped form permutes channels with
# index_select, which ncnn lacks too, its dense form is plain convolutions; re-parameterisation hooks run;
# public attention and downsampling blocks take their rank-4 forms (`edgeexport.rewrite.rank4`).
REWRITES = ("reparameterize", "hetconv_dense", "rank4")
INT8_NOTE = "int8 needs ncnn's ncnn2table/ncnn2int8 tools, which the pip wheels do not ship"


class NcnnConversionFailed(EdgeExportError):
    op: str | None = None  # the PyTorch operator pnnx left unconverted, when that is the failure

    pass


def require_pnnx():
    try:
        import pnnx
    except ImportError:
        raise BackendMissing("pnnx", "pnnx is not installed", INSTALL_HINT) from None
    return pnnx


# ---------------------------------------------------------------- the param file


def read_param(path: Path) -> dict:
    """Layer types, input blobs (``Input`` layers, in order) and output blobs of an ncnn param file.

    Outputs are pnnx's ``out0, out1, ...`` in index order (an output may also feed other layers);
    for a param file pnnx did not write, the blobs no layer consumes."""
    lines = [ln.split() for ln in Path(path).read_text().splitlines()]
    if not lines or lines[0] != ["7767517"]:
        raise NcnnConversionFailed(f"{path} is not an ncnn param file")
    types: Counter = Counter()
    inputs, produced, consumed = [], [], set()
    for parts in lines[2:]:
        if len(parts) < 4:
            continue
        kind, n_in, n_out = parts[0], int(parts[2]), int(parts[3])
        bottoms, tops = parts[4:4 + n_in], parts[4 + n_in:4 + n_in + n_out]
        types[kind] += 1
        consumed.update(bottoms)
        produced += tops
        if kind == "Input":
            inputs += tops
    named = sorted((b for b in produced if re.fullmatch(r"out\d+", b)), key=lambda b: int(b[3:]))
    outputs = named or [b for b in produced if b not in consumed]
    return {"layers": dict(types.most_common()), "inputs": inputs, "outputs": outputs}


def unsupported_layers(types) -> list[str]:
    """Layer types ncnn has no implementation for (what pnnx left as PyTorch operators), pnnx's
    generic ``pnnx.Expression`` last: the operator it feeds is the news."""
    try:
        import ncnn

        bad = [t for t in types if ncnn.layer_to_index(t) < 0]
    except ImportError:  # a build-only host: pnnx's leftovers carry PyTorch names (aten::x, torch.x, F.x)
        bad = [t for t in types if "." in t or "::" in t]
    return sorted(bad, key=lambda t: (t == "pnnx.Expression", t))


# ---------------------------------------------------------------- conversion


def companion(param: Path) -> Path:
    """``NAME[.fp16].ncnn.bin`` beside ``NAME[.fp16].ncnn.param``."""
    return Path(param).with_name(Path(param).name[:-len(".param")] + ".bin")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fail" in ln.lower() or "unsupported" in ln.lower()]
    return (errors or lines or [""])[-1][:300]


def convert(module, sample, param_out: Path, *, fp16: bool, blobs: tuple[int, int] | None = None) -> dict:
    """Trace ``module`` (returning a tuple) at batch 1, convert it with pnnx, write ``param_out`` and its
    ``.bin`` atomically; return build facts. ``blobs``: the (inputs, outputs) counts the model has.
    Raises NcnnConversionFailed with one line, leaving nothing under the final names."""
    import torch

    from edgeexport.util import atomic_path

    pnnx = require_pnnx()
    x = sample[:1].contiguous()
    shape = ",".join(str(d) for d in x.shape)
    with tempfile.TemporaryDirectory(prefix="edgeexport-pnnx-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        try:
            with quiet(), torch.no_grad():
                torch.jit.trace(module.eval(), (x,), check_trace=False).save(str(work / "model.pt"))
        except Exception as exc:
            raise NcnnConversionFailed(f"torch.jit.trace (pnnx's input) failed: {type(exc).__name__}: "
                                       f"{_last_line(str(exc))}") from None
        trace_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        # The executable itself: pnnx.export() runs it too, but ignores its exit status and then
        # imports the generated model_pnnx.py (loading every weight into a torch module).
        proc = subprocess.run([pnnx.EXEC_PATH, "model.pt", f"inputshape=[{shape}]f32", f"fp16={int(fp16)}",
                               "device=cpu", "optlevel=2"], cwd=work, capture_output=True, text=True)
        convert_s = time.perf_counter() - t1
        param, weights = work / "model.ncnn.param", work / "model.ncnn.bin"
        if proc.returncode != 0 or not param.exists() or not weights.exists():
            why = _last_line(proc.stderr) or _last_line(proc.stdout) or f"exit status {proc.returncode}"
            raise NcnnConversionFailed(f"pnnx could not convert the model: {why}")
        info = read_param(param)
        bad = unsupported_layers(info["layers"])
        if bad:
            exc = NcnnConversionFailed(f"ncnn has no layer for {', '.join(bad)} (pnnx left "
                                       f"{'it' if len(bad) == 1 else 'them'} unconverted)")
            exc.op = next((b for b in bad if b != "pnnx.Expression"), bad[0])
            raise exc
        got = (len(info["inputs"]), len(info["outputs"]))
        if blobs is not None and got != tuple(blobs):
            raise NcnnConversionFailed(f"pnnx wrote {got[0]} input / {got[1]} output blobs; the model has "
                                       f"{blobs[0]} / {blobs[1]}")
        with atomic_path(param_out) as tp, atomic_path(companion(param_out)) as tb:
            shutil.copyfile(param, tp)
            shutil.copyfile(weights, tb)
    return {**info, "trace_s": round(trace_s, 2), "convert_s": round(convert_s, 2),
            "pnnx_log_lines": len((proc.stdout + proc.stderr).splitlines())}


# ---------------------------------------------------------------- runner


def param_layers(path: Path) -> list[tuple[str, str, list[str]]]:
    """(type, name, top blobs) of every layer of an ncnn param file, in file (execution) order."""
    out = []
    for parts in (ln.split() for ln in Path(path).read_text().splitlines()[2:]):
        if len(parts) >= 4:
            n_in, n_out = int(parts[2]), int(parts[3])
            out.append((parts[0], parts[1], parts[4 + n_in:4 + n_in + n_out]))
    return out


TAP_SKIP = {"Input", "Split", "MemoryData", "Noop"}


def _flag(value) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)


class NcnnRunner(Runner):
    backend = "ncnn"

    def __init__(self, param: str | Path, weights: str | Path | None = None, threads: int | None = None,
                 input_names=("input",), output_names=(), *, blobs: dict | None = None,
                 options: dict | None = None, item_shapes: dict | None = None):
        super().__init__(threads)
        self.param = Path(param)
        self.weights = Path(weights) if weights else companion(self.param)
        self.options = {k: _flag((options or {}).get(k, False)) for k in FP16_OPTIONS}  # off unless asked
        self._inputs, self._outputs = list(input_names), list(output_names)
        self.blobs = dict(blobs or {})  # edgeexport name -> ncnn blob name
        self.item_shapes = {k: tuple(v) for k, v in (item_shapes or {}).items()}

    def _activate(self) -> None:
        import ncnn

        if not all(n in self.blobs for n in self._inputs + self._outputs):  # a spec without the mapping
            info = read_param(self.param)
            self._outputs = self._outputs or [f"output{i}" for i in range(len(info["outputs"]))]
            self.blobs = {**dict(zip(self._inputs, info["inputs"])), **dict(zip(self._outputs, info["outputs"]))}
        self.ncnn = ncnn
        net = ncnn.Net()
        net.opt.use_vulkan_compute = False
        if self.threads:
            net.opt.num_threads = self.threads
        net.opt.use_bf16_storage = False
        for name, value in self.options.items():
            setattr(net.opt, name, value)
        with native_stderr() as said:  # ncnn's parser prints its complaints to stderr: into the error instead
            loaded = net.load_param(str(self.param)) == 0 and net.load_model(str(self.weights)) == 0
        if not loaded:
            raise RuntimeError(f"ncnn could not load {self.param.name} / {self.weights.name}"
                               + (f": {said[0][:200]}" if said else ""))
        self.net = net

    def _taps(self, feed):
        """Every layer's output blob for the first item of ``feed``. ncnn's files keep no module names (pnnx
        renames the layers it fuses), so the taps carry none: the diff pairs them with modules by value."""
        from edgeexport.runners.base import Tap

        ex = self.net.create_extractor()
        items = {k: np.ascontiguousarray(feed[k][0], dtype=np.float32) for k in self._inputs}
        for k, item in items.items():
            ex.input(self.blobs[k], self.ncnn.Mat(item))
        taps = []
        for kind, name, tops in param_layers(self.param):
            if kind in TAP_SKIP or len(tops) != 1:
                continue
            ret, mat = ex.extract(tops[0])
            if ret == 0:
                taps.append(Tap(tops[0], None, f"{kind} {name}", np.array(mat, dtype=np.float32), layout="chw"))
        del ex
        return taps

    def _infer(self, feed):
        n = len(feed[self._inputs[0]])
        outs: dict[str, list] = {k: [] for k in self._outputs}
        for i in range(n):
            ex = self.net.create_extractor()
            items = [np.ascontiguousarray(feed[k][i], dtype=np.float32) for k in self._inputs]
            for k, item in zip(self._inputs, items):
                if ex.input(self.blobs[k], self.ncnn.Mat(item)) != 0:
                    raise RuntimeError(f"ncnn refused input {k} ({self.blobs[k]})")
            for k in self._outputs:
                ret, mat = ex.extract(self.blobs[k])
                if ret != 0:
                    raise RuntimeError(f"ncnn could not compute output {k} ({self.blobs[k]})")
                a = np.array(mat, dtype=np.float32)
                shape = self.item_shapes.get(k)
                outs[k].append(a.reshape(shape) if shape and a.size == int(np.prod(shape)) else a)
            del ex, items
        return {k: np.stack(v) for k, v in outs.items()}

    def _deactivate(self) -> None:
        self.net.clear()
        self.net = None

    def describe(self) -> dict:
        net = getattr(self, "net", None)  # what the loaded net really runs with, else what it will
        opts = {k: bool(getattr(net.opt, k)) for k in FP16_OPTIONS} if net is not None else self.options
        return {**super().describe(), "runtime": f"ncnn {version_of('ncnn')}", "device": "cpu", **opts,
                "artifact": str(self.param)}


# ---------------------------------------------------------------- the target


class NcnnOptions(TargetOptions):
    precision: Literal["fp32", "fp16"] = Field(
        "fp32", description="fp16: fp16 weights, and ncnn's fp16 storage / packing / arithmetic on")
    rewrites: list[str] = Field(default_factory=lambda: list(REWRITES),
                                description="exact rewrites applied before tracing (see `edgeexport.rewrite`)")


BlobName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/-]{1,200}$")]


class NcnnRunnerOptions(RunnerOptions):
    blobs: Annotated[dict[BlobName, BlobName], Field(max_length=4096)] = {}  # edgeexport name -> ncnn blob
    item_shapes: Annotated[dict[BlobName, Annotated[list[Annotated[int, Field(ge=1, le=1 << 20)]],
                                                   Field(max_length=8)]], Field(max_length=4096)] = {}
    use_fp16_storage: bool = False
    use_fp16_packed: bool = False
    use_fp16_arithmetic: bool = False


class NcnnRecord(BuildRecord):
    precision: str
    weights: str  # how the .bin stores them
    pnnx: str | None
    ncnn: str | None
    trace_s: float
    convert_s: float
    layer_count: int
    layers: dict[str, int] = {}
    rewrites: dict[str, int] = {}
    blobs: dict[str, str] = {}  # edgeexport name -> ncnn blob
    runtime: dict[str, bool] = {}  # ncnn options the runner sets
    bin_bytes: int
    pnnx_log_lines: int = 0


@register_target
class NcnnTarget(Target):
    """ncnn through pnnx: fp32 (fp32 weights, fp16 paths off) and fp16 (fp16 weights, fp16 paths on).

    int8 needs ncnn's ncnn2table/ncnn2int8 tools, which the pip wheels do not ship.
    """

    name = "ncnn"
    order = 60
    title = "ncnn"
    backend = "ncnn"
    help = "Convert with pnnx to an ncnn model (NAME.ncnn.param + .bin); parity and latency on ncnn's CPU runtime."
    Options = NcnnOptions
    runner_options = NcnnRunnerOptions
    Record = NcnnRecord
    multiple = True
    formats = (Format(kind="ncnn", suffix=".ncnn.param", precision="fp32", runs_on="any CPU with ncnn",
                      companions=(".ncnn.bin",), options={"precision": "fp32"}),
               Format(kind="ncnn-fp16", suffix=".fp16.ncnn.param", precision="fp16",
                      runs_on="any CPU with ncnn (fp16 arithmetic on ARMv8.2+)", companions=(".fp16.ncnn.bin",),
                      options={"precision": "fp16"}))
    build_modules = ("pnnx",)
    run_modules = ("ncnn",)
    install = INSTALL_HINT
    extra = "ncnn"

    def build(self, ctx, options: NcnnOptions, art) -> None:

        fp16 = options.precision == "fp16"
        names_in, names_out = [ctx.input_name], list(ctx.output_names)
        if ctx.dynamic == "batch":
            art.dynamic = "batch"  # items run one by one: any batch size (H and W stay as converted)
        with ctx.status(f"Converting to ncnn with pnnx ({options.precision})"):
            model = ctx.torch_model(options.rewrites)
            rewrites = ctx.rewrite_counts(options.rewrites)
            try:
                info = convert(model, ctx.sample(), art.path, fp16=fp16,
                               blobs=(len(names_in), len(names_out)))
            except NcnnConversionFailed as exc:
                if exc.op:  # a PyTorch op ncnn has no layer for: where it is in the model
                    raise UnsupportedOp(exc.op, locate_in_torch(model, ctx.sample(), exc.op), str(exc)) from None
                raise BuildFailed(str(exc)) from None
        blobs = {**dict(zip(names_in, info["inputs"])), **dict(zip(names_out, info["outputs"]))}
        runtime = {k: fp16 for k in FP16_OPTIONS}
        item_shapes = {k: list(v[1:]) for k, v in (ctx.output_shapes or {}).items() if k in names_out}
        record = NcnnRecord(
            precision=options.precision, weights="fp16" if fp16 else "fp32", pnnx=version_of("pnnx"),
            ncnn=version_of("ncnn"), trace_s=info["trace_s"], convert_s=info["convert_s"],
            build_s=round(info["trace_s"] + info["convert_s"], 2), layer_count=sum(info["layers"].values()),
            layers=info["layers"], rewrites=rewrites, blobs=blobs, runtime=runtime,
            bin_bytes=companion(art.path).stat().st_size, pnnx_log_lines=info["pnnx_log_lines"],
            notes=[] if fp16 else [INT8_NOTE])
        spec = ctx.runner_spec(type(self), art.path, [companion(art.path)], blobs=blobs, item_shapes=item_shapes,
                               **runtime)
        art.finish(record, spec)

    @classmethod
    def runner(cls, spec, threads):
        o = dict(spec.options)
        if not any(k in o for k in FP16_OPTIONS):  # a spec written without them (`edgeexport bundle`): by format
            o.update(dict.fromkeys(FP16_OPTIONS, spec.artifact.endswith(cls.formats[1].suffix)))
        return NcnnRunner(spec.artifact, spec.files[0] if spec.files else None, threads, spec.input_names,
                          spec.output_names, blobs=o.get("blobs"), options=o, item_shapes=o.get("item_shapes"))
