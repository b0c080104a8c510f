"""HetConv forms: dense and grouped equal the seed's reference form, with far smaller ONNX graphs."""
import collections
import copy

import numpy as np
import onnx
import pytest
import torch

from edgeexport.rewrite.hetconv import to_dense, to_grouped, to_reference
from edgeexport.runners.onnxruntime import OnnxRuntimeRunner
from edgeexport.zoo.hetconv import HetConv, grouped_form_is_exact, hetconv_mask


def make(cin, cout, part, stride=1, bias=False, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    m = HetConv(cin, cout, part, stride, bias=bias, form="reference").to(dtype)
    if bias:
        with torch.no_grad():
            m.bias.normal_()
    return m


def forms_error(m, x):
    m.form = "reference"
    ref = m(x)
    errors = {}
    for form in ("dense", "grouped"):
        m.form = form
        errors[form] = ((m(x) - ref).abs().max() / ref.abs().max()).item()
    return errors


def test_seed_rule_and_parameter_layout():
    mask = hetconv_mask(24, 16, 4)
    assert mask[0, 0] and mask[0, 4] and not mask[0, 1] and mask[5, 1] and mask[5, 13] and not mask[5, 0]
    assert (mask.sum(1) == 4).all()  # 1/P of the inputs of every filter use 3x3 kernels
    m = HetConv(16, 24, 4)
    assert m.weight3.shape == (24 * 4, 3, 3) and m.weight1.shape == (24 * 12,) and m.bias is None
    assert sum(p.numel() for p in m.parameters()) == 24 * (4 * 9 + 12)  # the paper's count, nothing padded
    w = m.dense_weight()
    assert torch.equal(w[5, 1], m.weight3.view(24, 4, 3, 3)[5, 0])  # filter 5, channel 1 = 5 % 4 + 4 * 0
    assert torch.equal(w[5, 13], m.weight3.view(24, 4, 3, 3)[5, 3])
    assert w[5, 0, 1, 1] == m.weight1.view(24, 12)[5, 0] and (w[5, 0].flatten()[[0, 1, 2, 3, 5, 6, 7, 8]] == 0).all()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_dense_and_grouped_equal_reference_16_to_24(stride, bias):
    m = make(16, 24, 4, stride, bias)
    x = torch.randn(2, 16, 13, 10, dtype=torch.float64)
    assert m.effective_form == "reference"
    errors = forms_error(m, x)
    assert m.effective_form == "grouped"
    assert max(errors.values()) <= 1e-12, errors


def test_float32_forms_within_tolerance():
    m = make(16, 24, 4, dtype=torch.float32)
    errors = forms_error(m, torch.randn(1, 16, 17, 15))
    assert max(errors.values()) <= 1e-5, errors


# (in, out, P) -> whether the grouped form applies; otherwise "grouped" computes the dense form
EXACTNESS = [((16, 24, 4), True), ((32, 32, 4), True), ((8, 8, 1), True), ((4, 12, 4), True),
             ((12, 4, 4), True), ((9, 6, 3), True), ((16, 22, 4), False), ((10, 16, 4), False),
             ((13, 7, 3), False), ((6, 6, 4), False)]


@pytest.mark.parametrize("shape,exact", EXACTNESS)
def test_grouped_form_exact_exactly_when_part_divides_both_channel_counts(shape, exact):
    cin, cout, p = shape
    assert grouped_form_is_exact(cin, cout, p) == exact == (cin % p == 0 and cout % p == 0)
    m = make(cin, cout, p, stride=2)
    errors = forms_error(m, torch.randn(2, cin, 9, 8, dtype=torch.float64))
    assert m.effective_form == ("grouped" if exact else "dense")
    assert max(errors.values()) <= 1e-12, errors
    if not exact:
        with pytest.raises(ValueError, match="divisible"):
            m.grouped_weights()


def test_forms_share_gradients():
    """One canonical parameter set: training in any form gives the same gradients."""
    m = make(8, 12, 4, bias=True)
    x = torch.randn(2, 8, 7, 6, dtype=torch.float64)
    grads = {}
    for form in ("reference", "dense", "grouped"):
        m.form = form
        m.zero_grad()
        (m(x) ** 2).sum().backward()
        grads[form] = [p.grad.clone() for p in m.parameters()]
    for form in ("dense", "grouped"):
        for a, b in zip(grads["reference"], grads[form]):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_rewrites_set_forms_in_place_and_keep_state_dict():
    model = torch.nn.Sequential(HetConv(8, 16, 4, form="reference"), torch.nn.ReLU(),
                                HetConv(16, 12, 4, stride=2, form="dense"), HetConv(12, 10, 4, form="reference"))
    x = torch.randn(1, 8, 11, 9)
    with torch.no_grad():
        ref = model(x)
    state = copy.deepcopy(model.state_dict())
    original = copy.deepcopy(model)
    assert to_grouped(model) == 3 and to_grouped(model) == 0
    assert [m.effective_form for m in model if isinstance(m, HetConv)] == ["grouped", "grouped", "dense"]
    assert to_dense(model) == 3 and to_reference(model) == 3 and to_dense(model) == 3
    assert [m.form for m in original if isinstance(m, HetConv)] == ["reference", "dense", "reference"]
    new_state = model.state_dict()
    assert list(new_state) == list(state) and all(torch.equal(state[k], new_state[k]) for k in state)
    for fn in (to_grouped, to_dense, to_reference):
        fn(model)
        with torch.no_grad():
            assert (model(x) - ref).abs().max() <= 1e-5 * ref.abs().max()
    with pytest.raises(ValueError, match="form"):
        model[0].form = "sparse"


def test_state_dict_moves_between_forms():
    a = HetConv(16, 24, 4, form="reference")
    b = HetConv(16, 24, 4, form="grouped")
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 16, 9, 9)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-5)


def export(m, path, shape):
    torch.onnx.export(m.eval(), (torch.randn(*shape),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["y"], dynamic_axes={"input": {2: "h", 3: "w"}})
    return onnx.load(str(path)).graph


def test_onnx_node_count_reduction_32_to_32(tmp_path):
    counts, ops = {}, {}
    for form in ("reference", "dense", "grouped"):
        m = make(32, 32, 4, dtype=torch.float32)
        m.form = form
        g = export(m, tmp_path / f"{form}.onnx", (1, 32, 16, 16))
        counts[form] = len(g.node)
        ops[form] = collections.Counter(n.op_type for n in g.node)
    print("HetConv 32->32 P=4 ONNX nodes:", counts, {k: dict(v) for k, v in ops.items() if k != "reference"})
    assert ops["reference"]["Conv"] == 32 * 32
    assert counts["reference"] >= 10 * counts["dense"] and counts["reference"] >= 10 * counts["grouped"]
    assert dict(ops["dense"]) == {"Conv": 1}
    assert ops["grouped"]["Conv"] == 2 and ops["grouped"]["Gather"] == 2 and ops["grouped"]["Add"] == 1
    assert set(ops["grouped"]) <= {"Conv", "Gather", "Add", "Constant"}


@pytest.mark.parametrize("form", ["reference", "dense", "grouped"])
@pytest.mark.parametrize("stride", [1, 2])
def test_onnx_forms_match_eager_at_odd_sizes(form, stride, tmp_path):
    m = make(16, 24, 4, stride, bias=True, dtype=torch.float32)
    m.form = form
    p = tmp_path / "h.onnx"
    export(m, p, (1, 16, 12, 12))
    with OnnxRuntimeRunner(p) as run:
        for hw in [(12, 12), (17, 11)]:
            x = torch.randn(1, 16, *hw)
            with torch.no_grad():
                ref = m(x).numpy()
            got = run.infer({"input": x.numpy()})["y"]
            assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("bias", [False, True])
def test_fold_batchnorm_is_exact_in_every_form(bias):
    m = make(16, 24, 4, stride=2, bias=bias)
    bn = torch.nn.BatchNorm2d(24).double().eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    x = torch.randn(2, 16, 11, 10, dtype=torch.float64)
    with torch.no_grad():
        ref = bn(m(x))
        m.fold_batchnorm(bn)
        for form in ("reference", "dense", "grouped"):
            m.form = form
            assert (m(x) - ref).abs().max() <= 1e-12 * ref.abs().max()
    assert m.bias is not None and sum(p.numel() for p in m.parameters()) == 24 * (4 * 9 + 12) + 24


def test_torch_fx_traces_every_form():
    import torch.fx

    m = make(16, 24, 4, dtype=torch.float32)
    x = torch.randn(1, 16, 9, 7)
    for form in ("dense", "grouped", "reference"):
        m.form = form
        gm = torch.fx.symbolic_trace(m)
        with torch.no_grad():
            assert torch.allclose(gm(x), m(x), atol=1e-5)
