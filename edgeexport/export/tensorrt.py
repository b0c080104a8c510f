"""TensorRT engines from ONNX, with TensorRT's Python API (written against TensorRT 10).

Not runnable on machines without TensorRT and an NVIDIA GPU: ``edgeexport trt`` then runs
the pre-flight (``trt_preflight.py``) and exits 2 with an install hint.

``--int8`` builds from a QDQ graph (explicit quantization: the scales come from the
graph's QuantizeLinear / DequantizeLinear nodes), never from a TensorRT calibrator. TensorRT
takes signed, symmetric Q/DQ only, so that graph is quantized with int8 activations and
zero points of 0 (``quantize --target tensorrt``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from edgeexport.errors import BackendMissing, EdgeExportError

INSTALL_HINT = ("on a machine with an NVIDIA GPU and driver: pip install 'edgeexport[tensorrt]' "
                "(tensorrt and cuda-python wheels from NVIDIA's index), or use a JetPack image on Jetson")


class TensorRTBuildFailed(EdgeExportError):
    pass


def tensorrt_available() -> tuple[bool, str]:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # the PyPI stub raises at import when the real wheel is missing
        return False, f"TensorRT is not installed here ({type(exc).__name__})"
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            return False, "cuda-python is not installed (pip install cuda-python)"
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        return False, "no CUDA GPU is visible"
    return True, ""


def require_tensorrt() -> None:
    ok, reason = tensorrt_available()
    if not ok:
        raise BackendMissing("TensorRT", reason, INSTALL_HINT)


def gpu_info() -> dict:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    err, props = cudart.cudaGetDeviceProperties(0)
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.strip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


def build_engine(onnx_path: Path, engine_path: Path, *, fp16: bool = False, int8: bool = False,
                 shapes: dict[str, tuple[tuple, tuple, tuple]] | None = None, workspace_mib: int = 2048,
                 timing_cache: Path | None = None) -> dict:
    """Parse ``onnx_path``, build and serialize an engine; write ``NAME.engine.json`` beside it."""
    import tensorrt as trt

    from edgeexport.util import atomic_path

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            errors.append(f"node {e.node_name() or e.node()} ({e.node_operator()}): {e.desc()}")
        raise TensorRTBuildFailed("TensorRT's ONNX parser failed: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)  # with Q/DQ in the network: explicit quantization
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
            "profiles": profile_shapes, "precision": "int8" if int8 else "fp16" if fp16 else "fp32",
            "workspace_mib": workspace_mib, "timing_cache": str(timing_cache) if timing_cache else None,
            "timing_cache_reused": bool(cache_bytes), "build_s": round(time.perf_counter() - t0, 1)}
    with atomic_path(engine_path.with_name(engine_path.name + ".json")) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return meta
