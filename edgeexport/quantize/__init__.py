"""Reduced precision: int8 (static QDQ, dynamic) and fp16 ONNX graphs, built to be faithful and fast.

Uses ONNX Runtime's quantization tooling (``quant_pre_process``, ``quantize_static`` with a
calibration reader over real photographs, ``quantize_dynamic``, the QDQ debugging helpers)
and onnxconverter-common's fp16 converter; nothing here re-implements a calibrator or a
graph converter. See ``int8.py`` for how the int8 graph is made fast.
"""
