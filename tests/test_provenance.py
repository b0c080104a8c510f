"""Which module an ONNX node comes from, in the graphs of both exporters: the TorchScript exporter names a
container's child with the container's name in front (``/model/features/features.1/features.1.0/Conv``), which is
``features.1.0``, not ``features.features.1.features.1.0``."""
import onnx
import pytest
import torch
from torch import nn

from edgeexport.errors import UserError
from edgeexport.provenance import onnx_scopes, torchscript_path
from edgeexport.source import NamedOutputs


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv1(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(Block(), Block()))
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.features(x))


def test_torchscript_scope_segments_become_module_paths():
    assert torchscript_path(["model", "features", "features.1", "features.1.0", "conv1"]) == "model.features.1.0.conv1"
    assert torchscript_path(["model", "layer1", "layer1.0", "conv1"]) == "model.layer1.0.conv1"
    assert torchscript_path(["model", "head"]) == "model.head"


@pytest.mark.parametrize("dynamo", [False, True])
def test_every_conv_is_found_under_its_module_path(dynamo, tmp_path):
    wrapped = NamedOutputs(Net().eval(), ["out"], "tensor").eval()  # the wrapper every export puts around the model
    path = tmp_path / "m.onnx"
    torch.onnx.export(wrapped, (torch.randn(1, 3, 8, 8),), str(path), dynamo=dynamo, input_names=["input"])
    graph = onnx.load(str(path)).graph
    scopes = onnx_scopes(graph)
    convs = sorted({scopes[n.name] for n in graph.node if n.op_type == "Conv" and n.name in scopes})
    assert convs == ["features.0", "features.1.0.conv1", "features.1.1.conv1", "head"]


def test_the_default_exporter_comes_from_the_environment(monkeypatch):
    from edgeexport.targets.onnx import OnnxOptions

    monkeypatch.setenv("EDGEEXPORT_EXPORTER", "dynamo")
    assert OnnxOptions().exporter == "dynamo"
    monkeypatch.setenv("EDGEEXPORT_EXPORTER", "torchscript")
    assert OnnxOptions().exporter == "torchscript" and OnnxOptions(exporter="dynamo").exporter == "dynamo"
    monkeypatch.setenv("EDGEEXPORT_EXPORTER", "tflite")
    with pytest.raises(UserError, match="EDGEEXPORT_EXPORTER='tflite'"):
        OnnxOptions()
