"""Where an artifact departs from eager PyTorch: per-layer divergence, named by PyTorch module.

A runner's :meth:`~edgeexport.runners.base.Runner.taps` returns the intermediate tensors its runtime
computed, each with the module path of the user's model that produced it (from the converter's own
names: the ONNX exporter's name scopes, OpenVINO's runtime info, LiteRT's tensor names, pnnx's layer
names). :func:`eager_taps` records the output of every module of the eager model; :func:`align` pairs
the two by module path and measures each pair:

* layouts are reconciled (NHWC runtimes, ncnn's batchless blobs);
* a runtime tensor that a converter fused (conv + BatchNorm + activation in one kernel) is compared at
  the fused boundary: with the output of the module or of the normalisation / activation modules that
  follow it, whichever it is;
* quantized tensors are dequantized by the runner before they get here.

The result, :class:`LayerDiff`, is data: the per-layer records in eager execution order, the first layer
whose SNR falls below the precision's threshold, and the worst layers.
"""
from edgeexport.divergence.align import THRESHOLD_DB, LayerDiff, LayerRecord, align
from edgeexport.divergence.eager import ROOT, EagerTap, eager_taps

__all__ = ["ROOT", "THRESHOLD_DB", "EagerTap", "LayerDiff", "LayerRecord", "align", "eager_taps"]
