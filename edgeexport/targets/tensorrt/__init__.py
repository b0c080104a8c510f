"""TensorRT engines from ONNX with TensorRT's Python API (10.x and 11.x), and their runner.

Networks are **strongly typed**: the precision of every layer comes from the graph, never from
a builder flag (TensorRT 11 removed ``BuilderFlag.FP16`` / ``INT8`` and the calibrators, and 10.x
already offered strong typing). So:

* fp32 engines are built from the fp32 ONNX graph;
* fp16 engines from the mixed-precision fp16 ONNX graph the ``quantize`` target builds (fp32
  inputs and outputs kept, producers of fp16 overflows kept in fp32);
* int8 engines from the symmetric int8 Q/DQ graph (``quantize`` with ``target: tensorrt``):
  explicit quantization, the scales come from the graph.

The target declares those graphs as requirements; the pipeline builds them first. Without
TensorRT and a GPU (this machine) the target still runs the pre-flight
(:mod:`edgeexport.targets.tensorrt.preflight`: onnx-tensorrt's operator support matrix and
restrictions) on the graph it would build from, and the artifact is "not built on this machine".
Every ``trt.*`` name this file uses is checked against manifests of the TensorRT 10 and 11 Python
APIs in the tests, since the library cannot be imported here.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgeexport.errors import BuildFailed, EdgeExportError
from edgeexport.runners.base import Runner
from edgeexport.targets.registry import register_target
from edgeexport.targets.base import Availability, BuildRecord, Format, Requirement, Target, TargetOptions, fp32_graph

INSTALL_HINT = ("on a machine with an NVIDIA GPU and driver: pip install 'edgeexport[tensorrt]' "
                "(tensorrt and cuda-python wheels from NVIDIA's index), or use a JetPack image on Jetson")


class TensorRTBuildFailed(EdgeExportError):
    pass


def tensorrt_available() -> Availability:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # the PyPI stub raises at import when the real libraries are missing
        return Availability(False, f"TensorRT is not installed here ({type(exc).__name__})")
    try:
        cudart = _cudart()
    except ImportError:
        return Availability(False, "cuda-python is not installed (pip install cuda-python)")
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        return Availability(False, "no CUDA GPU is visible")
    return Availability(True)


def gpu_info() -> dict:
    err, props = _cudart().cudaGetDeviceProperties(0)
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.strip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


def strongly_typed_flags(trt) -> int:
    """Network creation flags: ``STRONGLY_TYPED`` where the enum has it. 10.x needs the flag;
    TensorRT 11 networks are always strongly typed, and 11.x keeps the flag only for
    compatibility (deprecated, ignored, renumbered to 0)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if flag is not None else 0


def build_engine(onnx_path: Path, engine_path: Path, *, precision: str,
                 shapes: dict[str, tuple[tuple, tuple, tuple]] | None = None, workspace_mib: int = 2048,
                 timing_cache: Path | None = None) -> dict:
    """Parse ``onnx_path`` into a strongly typed network, build and serialize an engine; write
    ``NAME.engine.json`` beside it. ``precision`` is what the graph holds (for the record)."""
    import tensorrt as trt

    from edgeexport.util import atomic_path

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            errors.append(f"node {e.node_name() or e.node()} ({e.node_operator()}): {e.desc()}")
        raise TensorRTBuildFailed("TensorRT's ONNX parser failed: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    profile_shapes = {}
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            if not shapes or tensor.name not in shapes:
                raise TensorRTBuildFailed(f"input {tensor.name!r} is dynamic {tuple(tensor.shape)}: "
                                          "give --min-shape/--opt-shape/--max-shape")
            lo, opt, hi = shapes[tensor.name]
            profile.set_shape(tensor.name, lo, opt, hi)
            profile_shapes[tensor.name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
        config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildFailed("TensorRT could not build an engine (see the TensorRT log above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    if timing_cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))
    io = {network.get_input(i).name: list(network.get_input(i).shape) for i in range(network.num_inputs)}
    io.update({network.get_output(i).name: list(network.get_output(i).shape) for i in range(network.num_outputs)})
    meta = {"tensorrt": trt.__version__, **gpu_info(), "onnx": str(onnx_path), "shapes": io,
            "profiles": profile_shapes, "precision": precision, "strongly_typed": True,
            "workspace_mib": workspace_mib, "timing_cache": str(timing_cache) if timing_cache else None,
            "timing_cache_reused": bool(cache_bytes), "build_s": round(time.perf_counter() - t0, 1)}
    with atomic_path(engine_path.with_name(engine_path.name + ".json")) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# ---------------------------------------------------------------- runner


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__(threads)  # threads do not apply to a GPU engine; kept for the report
        self.path = Path(path)

    def _activate(self) -> None:
        import tensorrt as trt

        self.cudart = _cudart()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"cannot deserialize {self.path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self.cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self._outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self._dtypes = {n: trt.nptype(self.engine.get_tensor_dtype(n)) for n in names}
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart.cudaFree(ptr))
            ptr = _check(self.cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _enqueue(self, feed):
        cudart = self.cudart
        host_out = {}
        for n in self._inputs:
            x = np.ascontiguousarray(feed[n], dtype=self._dtypes[n])
            self.context.set_input_shape(n, x.shape)
            ptr = self._buffer(n, x.nbytes)
            _check(cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
            self.context.set_tensor_address(n, ptr)
        for n in self._outputs:
            shape = tuple(self.context.get_tensor_shape(n))
            host_out[n] = np.empty(shape, dtype=self._dtypes[n])
            self.context.set_tensor_address(n, self._buffer(n, host_out[n].nbytes))
        return host_out

    def _infer(self, feed):
        cudart = self.cudart
        host_out = self._enqueue(feed)
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        for n, arr in host_out.items():
            _check(cudart.cudaMemcpyAsync(arr.ctypes.data, self._buffers[n][0], arr.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return {n: a.astype(np.float32, copy=False) for n, a in host_out.items()}

    def gpu_compute_times(self, feed, runs: int = 100, warmup: int = 10) -> list[float]:
        """GPU compute time per inference in ms (CUDA events around the enqueue only), like trtexec."""
        cudart = self.cudart
        self._enqueue(feed)
        start, end = _check(cudart.cudaEventCreate()), _check(cudart.cudaEventCreate())
        times = []
        for i in range(warmup + runs):
            _check(cudart.cudaEventRecord(start, self.stream))
            self.context.execute_async_v3(self.stream)
            _check(cudart.cudaEventRecord(end, self.stream))
            _check(cudart.cudaEventSynchronize(end))
            if i >= warmup:
                times.append(float(_check(cudart.cudaEventElapsedTime(start, end))))
        _check(cudart.cudaEventDestroy(start))
        _check(cudart.cudaEventDestroy(end))
        return times

    def _deactivate(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cudart.cudaFree(ptr)
        self._buffers = {}
        self.cudart.cudaStreamDestroy(self.stream)
        self.context = self.engine = self.runtime = None

    def describe(self) -> dict:
        import tensorrt as trt

        return {**super().describe(), "runtime": f"tensorrt {trt.__version__}", "device": gpu_info(),
                "artifact": str(self.path)}


# ---------------------------------------------------------------- the target


class TensorRTOptions(TargetOptions):
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp32", description="fp16: built from the fp16 ONNX graph; int8: from the symmetric int8 Q/DQ graph")
    min_shape: list[int] | None = Field(None, json_schema_extra={"parse": "shape"})
    opt_shape: list[int] | None = Field(None, json_schema_extra={"parse": "shape"})
    max_shape: list[int] | None = Field(None, json_schema_extra={"parse": "shape"})
    workspace_mib: int = Field(2048, ge=16, json_schema_extra={"flag": "--workspace"})
    timing_cache: str | None = Field(None, description="reused across builds (default: OUTPUT/tensorrt.timing.cache)")


class TensorRTRecord(BuildRecord):
    source: str
    preflight: dict
    tensorrt: str | None = None
    gpu: str | None = None
    compute_capability: str | None = None
    onnx: str | None = None
    shapes: dict[str, list[int]] = {}
    profiles: dict = {}
    precision: str | None = None
    strongly_typed: bool | None = None
    workspace_mib: int | None = None
    timing_cache: str | None = None
    timing_cache_reused: bool | None = None

    def terminal(self) -> list[str]:
        pre = self.preflight
        verdict = "would parse" if pre["parses"] else "would NOT parse"
        lines = [f"TensorRT pre-flight of {self.source}: {verdict} ({len(pre['errors'])} errors, "
                 f"{pre['warning_count']} warnings)"]
        lines += [f"  {f['severity']:<7} {f['node']} ({f['op']}): {f['message']}" for f in pre["errors"] + pre["warnings"]]
        return lines


_GRAPH = {"fp32": ("onnx", {}), "fp16": ("quantize", {"mode": "fp16"}),
          "int8": ("quantize", {"mode": "int8", "target": "tensorrt"})}
_GRAPH_KIND = {"fp32": "onnx", "fp16": "onnx-fp16", "int8": "onnx-int8-tensorrt"}


@register_target
class TensorRTTarget(Target):
    name = "trt"
    order = 20
    ray_resources = {"GPU": 1}
    builds_where_it_runs = True  # an engine runs only on the GPU (and TensorRT version) that built it
    title = "TensorRT"
    backend = "tensorrt"
    help = "Build a TensorRT engine (strongly typed: fp32, fp16 or int8 from the graph), after a pre-flight of its ONNX graph."
    Options = TensorRTOptions
    Record = TensorRTRecord
    from_onnx_file = True
    formats = (Format(kind="tensorrt", suffix=".engine", precision="fp32",
                      runs_on="the NVIDIA GPU (and TensorRT version) that built it", options={"precision": "fp32"}),
               Format(kind="tensorrt-fp16", suffix=".fp16.engine", precision="fp16",
                      runs_on="the NVIDIA GPU (and TensorRT version) that built it", options={"precision": "fp16"}),
               Format(kind="tensorrt-int8", suffix=".int8.engine", precision="int8",
                      runs_on="the NVIDIA GPU (and TensorRT version) that built it", options={"precision": "int8"}))
    build_modules = ("tensorrt",)
    run_modules = ("tensorrt",)
    install = INSTALL_HINT
    extra = "tensorrt"

    @classmethod
    def build_availability(cls) -> Availability:
        return tensorrt_available()

    @classmethod
    def run_availability(cls) -> Availability:
        return tensorrt_available()

    @classmethod
    def requires(cls, options: TensorRTOptions, ctx) -> list[Requirement]:
        target, opts = _GRAPH[options.precision]
        if target == "onnx" and ctx.source_onnx:
            return []
        return [Requirement(target, opts, kind=_GRAPH_KIND[options.precision])]

    def _source(self, ctx, options) -> Path:
        if options.precision == "fp32":
            return fp32_graph(ctx)
        return ctx.require(_GRAPH_KIND[options.precision]).path

    def _preflight(self, ctx, options, art) -> TensorRTRecord:
        import onnx

        from edgeexport.targets.tensorrt.preflight import preflight, summarize

        source = self._source(ctx, options)
        summary = summarize(preflight(onnx.load(str(source), load_external_data=False)))
        record = TensorRTRecord(source=str(source), preflight=summary)
        if not summary["parses"]:
            art.record = record
            raise BuildFailed("pre-flight: TensorRT's ONNX parser would reject " + "; ".join(
                f"{e['node']} ({e['op']}): {e['message']}" for e in summary["errors"][:3]))
        return record

    def unavailable(self, ctx, options, art, reason) -> None:
        """No TensorRT here: the pre-flight of the graph the engine would be built from still runs."""

        try:
            art.record = self._preflight(ctx, options, art)
            art.record.notes.append(f"engine not built: {reason}; the pre-flight above ran here")
        except BuildFailed as exc:
            art.error = str(exc)

    def build(self, ctx, options: TensorRTOptions, art) -> None:

        record = self._preflight(ctx, options, art)
        source = Path(record.source)
        art.dynamic = ctx.dynamic if options.precision != "int8" else "none"
        n, c, h, w = ctx.shape
        shapes = None
        if art.dynamic != "none":
            hw, b = art.dynamic in ("hw", "all"), art.dynamic in ("batch", "all")
            lo = tuple(options.min_shape or (1, c, max(32, h // 2) if hw else h, max(32, w // 2) if hw else w))
            opt = tuple(options.opt_shape or ctx.shape)
            hi = tuple(options.max_shape or (n * (4 if b else 1), c, h * 2 if hw else h, w * 2 if hw else w))
            shapes = {ctx.input_name: (lo, opt, hi)}
        cache = Path(options.timing_cache) if options.timing_cache else ctx.out_dir / "tensorrt.timing.cache"
        with ctx.status(f"Building TensorRT engine ({options.precision}, strongly typed)"):
            try:
                meta = build_engine(source, art.path, precision=options.precision, shapes=shapes,
                                    workspace_mib=options.workspace_mib, timing_cache=cache)
            except TensorRTBuildFailed as exc:
                art.record = record
                raise BuildFailed(str(exc)) from None
        meta.pop("build_s", None)
        record = record.model_copy(update=meta)
        art.finish(record, ctx.runner_spec(type(self), art.path))

    @classmethod
    def runner(cls, spec, threads):
        return TensorRTRunner(spec.artifact, threads=threads)
