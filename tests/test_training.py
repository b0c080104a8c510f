"""Training reproduces from a seed, stores weights as safetensors (no pickle) with its recipe and metrics."""
from dataclasses import replace

import pytest
import torch

import edgeexport.training as T
from edgeexport.training import RECIPES, save_weights
from tests.conftest import assert_one_line_error


def _tiny(name="lraspp_mobilenetv3_small"):
    return replace(RECIPES[name], batch=2, size=64, steps=3)


@pytest.fixture(autouse=True)
def _small(monkeypatch):
    """Tiny runs: one BatchNorm batch, evaluation at 96x96, batches made in-process (no fork in a test
    process that may hold JAX's threads)."""
    monkeypatch.setattr(T, "BN_BATCHES", 2)
    monkeypatch.setattr(T, "VAL_BN_BATCHES", 1)
    real = T.train
    monkeypatch.setattr(T, "train", lambda *a, **k: real(*a, **{"eval_size": (96, 96), "workers": 0, **k}))


def train(*args, **kwargs):
    return T.train(*args, **kwargs)


def test_training_is_deterministic_and_round_trips_through_safetensors(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "BN_BATCHES", 2)
    a, info = train(_tiny(), eval_images=2)
    b, _ = train(_tiny(), eval_images=2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same seed, same weights
    assert info["recipe"]["model"] == "lraspp_mobilenetv3_small" and info["eval"]["metric"] == "miou"
    assert info["eval"]["images"] == 2 and 0.0 <= info["eval"]["value"] <= 1.0
    path = tmp_path / "w.safetensors"
    digest = save_weights(a, path, {"edgeexport": info})
    assert len(digest) == 64 and path.read_bytes()[:8] != b"PK\x03\x04"  # not a zip/pickle checkpoint
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()} == {torch.float16}
    # the stored weights are the ones train() returned (rounded to fp16 storage before the metrics were measured)
    from edgeexport.weights import read_state_dict

    back = read_state_dict(path)
    assert all(torch.equal(back[k].to(a[k].dtype), a[k]) for k in a)


def test_resume_from_checkpoint_gives_the_same_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "BN_BATCHES", 2)
    monkeypatch.setattr(T, "CHECKPOINT_EVERY", 2)
    monkeypatch.setattr(T, "VAL_IMAGES", 1)
    r = replace(_tiny(), steps=4)
    whole, info = train(r, eval_images=1)
    ck = tmp_path / "ck"
    train(replace(r, steps=4), eval_images=1, checkpoint=ck)  # leaves a checkpoint at step 2
    assert ck.exists() and info["validation"][0]["step"] == 2 and info["resumed_at_steps"] == []
    first = torch.load(ck, weights_only=True)["minutes"]
    resumed, again = train(r, eval_images=1, checkpoint=ck)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    # the record says it was resumed, and its training time includes the minutes before the resume
    assert again["resumed_at_steps"] == [2] and first > 0
    assert again["train_minutes"] is not None and again["train_minutes"] >= round(first, 1)


def test_classification_recipe_trains(monkeypatch):
    monkeypatch.setattr(T, "BN_BATCHES", 1)
    r = replace(RECIPES["pyconvresnet18"], batch=2, size=32, final_size=48, final_steps=1, steps=4)
    state, info = train(r, eval_images=2)
    assert info["eval"]["metric"] == "top1" and "fc.weight" in state


def test_train_command_rejects_unknown_models(cli):
    code, _, err = cli("train", "nosuchnet")
    assert_one_line_error(code, err, "unknown model")
    code, _, err = cli("train", "scnet50")
    assert_one_line_error(code, err, "no training recipe")
