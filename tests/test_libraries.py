"""Models from timm and torchvision (``timm:NAME``, ``torchvision:NAME``): built offline with the library's
own metadata, the user's checkpoint loaded strictly, BatchNorm settled on request, re-parameterisation
hooks called on the exported copy, dict outputs kept by name."""
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgeexport.errors import UserError
from edgeexport.source import load_model
from tests.conftest import ROOT, assert_one_line_error

pytestmark = pytest.mark.skipif(importlib.util.find_spec("timm") is None,  # importing it needs the workaround
                                reason="timm is not installed (pip install 'edgeexport[timm]')")


def test_torchvision_imports_beside_a_torch_build_its_ops_were_not_built_for():
    """Only when the plain import fails is its meta-registration module stubbed (on a matching torch install,
    nothing is touched); either way the models build and run."""
    code = ("import importlib, sys\n"
            "try:\n    importlib.import_module('torchvision'); plain = True\n"
            "except RuntimeError:\n    plain = False\n"
            "from edgeexport.libraries import import_torchvision\n"
            "tv = import_torchvision()\n"
            "stubbed = getattr(sys.modules['torchvision._meta_registrations'], '__file__', None) is None\n"
            "y = tv.models.mobilenet_v3_small().eval()(__import__('torch').zeros(1, 3, 64, 64))\n"
            "print(plain, stubbed, tuple(y.shape))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    plain, stubbed, shape = res.stdout.split(" ", 2)
    assert stubbed == str(plain == "False") and shape.strip() == "(1, 1000)"


def test_the_library_s_own_input_metadata():
    mnv4 = load_model("timm:mobilenetv4_conv_small")
    assert mnv4.origin == "timm:mobilenetv4_conv_small" and mnv4.name == "mobilenetv4_conv_small"
    assert mnv4.meta.input_size == (3, 224, 224) and mnv4.meta.resize == "center_crop"
    assert mnv4.meta.crop_fraction == 0.875 and mnv4.meta.mean == (0.485, 0.456, 0.406)
    eff = load_model("torchvision:efficientnet_b0")
    assert eff.meta.input_size == (3, 224, 224) and eff.meta.crop_fraction == pytest.approx(224 / 256)
    seg = load_model("torchvision:deeplabv3_mobilenet_v3_large", model_kwargs={"aux_loss": True})
    assert seg.meta.task == "segmentation" and seg.meta.input_size == (3, 520, 520)
    assert seg.meta.output_names == ("out", "aux")


@pytest.mark.parametrize("spec, needle", [
    ("timm:mobilenetv4_conv_smal", "timm has no model 'mobilenetv4_conv_smal'; did you mean mobilenetv4_conv_small"),
    ("torchvision:fasterrcnn_resnet50_fpn", "is a detection / video / optical-flow model"),
    ("torchvision:", "expected torchvision:NAME"),
])
def test_bad_library_specs_are_one_line_errors(spec, needle):
    with pytest.raises(UserError, match=needle):
        load_model(spec)


def test_onnx_from_timm_with_the_user_s_safetensors_offline(cli, tmp_path):
    """`edgeexport onnx --model timm:mobilenetv4_conv_small --weights my.safetensors`, no network: the file's
    weights are the ones exported (not the seeded ones)."""
    from safetensors.torch import save_file

    seeded = load_model("timm:mobilenetv4_conv_small").model
    torch.manual_seed(7)
    state = {k: (v + 0.01 * torch.randn_like(v)) if v.is_floating_point() else v for k, v in seeded.state_dict().items()}
    save_file(state, tmp_path / "my.safetensors")
    env = {"HF_HUB_OFFLINE": "1"}
    code, out, err = cli("onnx", "--model", "timm:mobilenetv4_conv_small", "--weights", tmp_path / "my.safetensors",
                         "--shape", "1x3x96x96", "--images", "1", "--no-bench", "-o", tmp_path / "o", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["model"]["weights"] == str(tmp_path / "my.safetensors") and rep["artifacts"]["onnx"]["status"] == "passed"
    from edgeexport.runners.onnxruntime import OnnxRuntimeRunner

    mine = load_model("timm:mobilenetv4_conv_small", weights=str(tmp_path / "my.safetensors")).model
    x = torch.rand(1, 3, 96, 96)
    with OnnxRuntimeRunner(tmp_path / "o" / "mobilenetv4_conv_small.onnx") as r:
        got = r.infer({"input": x.numpy()})["logits"]
    with torch.no_grad():
        assert np.allclose(got, mine(x).numpy(), atol=1e-4) and not np.allclose(got, seeded(x).numpy(), atol=1e-3)
    code, _, err = cli("onnx", "--model", "timm:mobilenetv4_conv_small", "--weights", tmp_path / "missing.safetensors",
                       "-o", tmp_path / "o2")
    assert_one_line_error(code, err, "does not exist")


def test_a_constant_reference_says_how_to_get_past_it_and_settle_bn_does(cli, tmp_path):
    """torchvision's seeded EfficientNet-B0 gives logits of ~1e-14: refused as constant, with the way out;
    with --settle-bn its BatchNorm statistics come from calibration photographs and parity is judged."""
    args = ["onnx", "--model", "torchvision:efficientnet_b0", "--shape", "1x3x96x96", "--images", "2", "--no-bench"]
    code, out, err = cli(*args, "-o", tmp_path / "a", "--json")
    assert code == 1
    issue = json.loads(out)["artifacts"]["onnx"]["parity"][0]["outputs"][0]["issues"][0]
    assert issue["kind"] == "degenerate_reference" and "--settle-bn" in issue["message"]
    code, out, err = cli(*args, "--settle-bn", "-o", tmp_path / "b", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["artifacts"]["onnx"]["status"] == "passed"
    assert any(p.startswith("BatchNorm statistics of 49 layers settled on 16 calibration images")
               for p in rep["model"]["preparation"]), rep["model"]["preparation"]


def test_reparameterisation_hooks_run_on_the_exported_copy(tmp_path):
    """MobileOne's training-time branches are fused by its own hook before export: fewer convolutions in the
    graph, the same outputs as the unfused eager model (parity is against it)."""
    import onnx

    from edgeexport import pipeline
    from edgeexport.recipe import Recipe

    rep = pipeline.run(Recipe.from_dict({"model": "timm:mobileone_s0", "input_shape": [1, 3, 64, 64], "settle_bn": True,
                                         "output": str(tmp_path), "inputs": {"images": 2, "eval_data": "none"},
                                         "bench": {"enabled": False}}), log=lambda m: None)
    assert rep.artifacts["onnx"].status == "passed", rep.artifacts["onnx"].why()
    fused = rep.artifacts["onnx"].record().rewrites["reparameterize"]
    assert fused > 10 and any(p.startswith("rewrite reparameterize:") for p in rep.model.preparation)
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(tmp_path / "mobileone_s0.onnx")).graph.node)
    unfused = sum(isinstance(m, torch.nn.Conv2d) for m in load_model("timm:mobileone_s0").model.modules())
    assert convs < unfused / 2, (convs, unfused)
