"""TensorRT engines, run with TensorRT 10's tensor-address API and cuda-python buffers (no torch).

Latency through ``infer`` includes host<->device copies, like every other runner; the
trtexec-style GPU compute time (CUDA events around ``execute_async_v3`` only) is available
from :meth:`gpu_compute_times`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeexport.runners.base import Runner


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

    @classmethod
    def availability(cls):
        from edgeexport.export.tensorrt import tensorrt_available

        return tensorrt_available()

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
        from edgeexport.export.tensorrt import gpu_info

        import tensorrt as trt

        return {**super().describe(), "runtime": f"tensorrt {trt.__version__}", "device": gpu_info(),
                "artifact": str(self.path)}
