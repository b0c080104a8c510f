"""HetConv-ResNet-34 (P = 4): layout, parameter count, odd sizes, ONNX parity in the default grouped form."""
import collections

import numpy as np
import onnx
import pytest
import torch

import edgeexport.zoo.hetconv  # noqa: F401  (registers hetconv_resnet34_p4)
from edgeexport.runners.onnxruntime import OnnxRuntimeRunner
from edgeexport.source import NamedOutputs
from edgeexport.weights import damp_residual_branches
from edgeexport.zoo import build_model, get_entry
from edgeexport.zoo.hetconv import HetConv

# ResNet-34 has 21,797,672 parameters, 21,086,208 of them in its block 3x3 convolutions;
# HetConv P=4 keeps (9/4 + 3/4) / 9 = 1/3 of those.
HETCONV_RESNET34_P4_PARAMS = 21_797_672 - 21_086_208 * 2 // 3


@pytest.fixture(scope="module")
def model():
    return build_model("hetconv_resnet34_p4")


def hetconvs(m):
    return [x for x in m.modules() if isinstance(x, HetConv)]


def test_registered_with_metadata_and_parameter_count(model):
    meta = get_entry("hetconv_resnet34_p4").meta
    assert meta.family == "hetconv" and meta.num_classes == 1000 and meta.task == "classification"
    params = sum(p.numel() for p in model.parameters())
    print("hetconv_resnet34_p4 parameters:", params)
    assert params == HETCONV_RESNET34_P4_PARAMS == 7_740_200
    import re

    quoted = re.search(r"([\d,]+) parameters", meta.notes)  # the count `edgeexport info` shows users
    assert quoted and int(quoted.group(1).replace(",", "")) == params
    assert build_model("hetconv_resnet34_p4", num_classes=5).fc.out_features == 5


def test_every_block_convolution_is_a_grouped_hetconv(model):
    convs = hetconvs(model)
    assert len(convs) == 2 * (3 + 4 + 6 + 3)
    assert all(c.part == 4 and c.form == "grouped" and c.effective_form == "grouped" for c in convs)
    others = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sorted(tuple(m.kernel_size) for m in others) == [(1, 1)] * 3 + [(7, 7)]  # shortcuts + stem
    keys = model.state_dict().keys()
    for k in ("conv1.weight", "layer1.0.conv1.weight3", "layer1.0.conv1.weight1", "layer2.0.downsample.0.weight",
              "layer4.2.bn2.running_var", "fc.weight"):
        assert k in keys
    assert model.layer2[0].conv1.stride == 2 and model.layer2[0].conv2.stride == 1
    assert model.layer3[1].conv1.weight3.shape == (256 * 256 // 4, 3, 3)


def test_residual_norm_is_the_second_batchnorm():
    m = build_model("hetconv_resnet34_p4")
    assert m.layer1[0].residual_norm() is m.layer1[0].bn2
    assert damp_residual_branches(m) == 16


@pytest.mark.parametrize("hw", [(64, 64), (97, 75), (33, 21)])
def test_output_shape_at_odd_sizes(model, hw):
    with torch.no_grad():
        assert model(torch.randn(1, 3, *hw)).shape == (1, 1000)


def test_grouped_and_dense_models_agree(model):
    x = torch.randn(2, 3, 45, 37)
    dense = build_model("hetconv_resnet34_p4", form="dense")
    assert all(c.form == "dense" for c in hetconvs(dense))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), dense.state_dict().values()))
    with torch.no_grad():
        a, b = model(x), dense(x)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory):
    p = tmp_path_factory.mktemp("hetconv") / "hetconv_resnet34_p4.onnx"
    wrapped = NamedOutputs(model, ["logits"], "tensor").eval()
    torch.onnx.export(wrapped, (torch.randn(1, 3, 64, 64),), str(p), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {2: "h", 3: "w"}})
    return p


def test_onnx_graph_is_compact(onnx_path):
    graph = onnx.load(str(onnx_path)).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    print("hetconv_resnet34_p4 ONNX nodes:", len(graph.node), dict(ops))
    assert ops["Conv"] == 2 * 32 + 3 + 1  # grouped + pointwise per HetConv, shortcuts, stem
    assert ops["Gather"] == 2 * 32  # the two channel permutations per HetConv
    inits = {i.name for i in graph.initializer}
    for n in graph.node:  # convolution weights are plain initializers (folded from the canonical parameters)
        if n.op_type == "Conv":
            assert n.input[1] in inits


@pytest.mark.parametrize("hw", [(64, 64), (97, 75)])
def test_onnx_matches_eager_at_export_and_odd_sizes(model, onnx_path, hw):
    x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(hw[0]))
    with torch.no_grad():
        ref = model(x).numpy()
    with OnnxRuntimeRunner(onnx_path) as run:
        got = run.infer({"input": x.numpy()})["logits"]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
