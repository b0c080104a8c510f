"""Train the reference checkpoints on the built-in tasks, reproducibly from a seed.

Trained weights exist so that accuracy claims about reduced precision are made on a network
whose weights look like a trained network's (small residual branches, saturated activations,
confident logits), measured by a task metric, not on seeded random weights.

    edgeexport train lraspp_mobilenetv3 --tag shapes          # the committed reference weights
    python -m edgeexport.training pyconvresnet50              # the same, as a script

Each model's :class:`~edgeexport.zoo.pretrained.TrainRecipe` is fixed in
:data:`~edgeexport.zoo.pretrained.RECIPES` (the metadata of the weights it trains); with the same recipe, seed, torch
version and thread count the weights are the same. It runs on 2 CPU cores (channels-last
convolutions; 15-60 minutes per model) and uses a CUDA GPU when one is visible. Training
samples are generated on the fly from the task's ``train`` split; the reported metrics are
measured on its ``eval`` split, which no step of training sees, after the weights have been
rounded to their fp16 storage.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from edgeexport.errors import UserError
from edgeexport.zoo.pretrained import RECIPES, TrainRecipe  # noqa: F401  (RECIPES: the trainable models)


TRAIN_SHAPES = (3, 8)  # shapes per training canvas: denser than evaluation scenes, for more foreground per step
CHECKPOINT_EVERY = 300  # steps between validations (and checkpoints, when asked for)
VAL_IMAGES = 16
VAL_BN_BATCHES = 8  # training batches that re-estimate BatchNorm for each validation
BN_BATCHES = 40  # training batches that re-estimate the BatchNorm statistics after the last step


def _first_output(out):
    if isinstance(out, dict):
        return out["out"] if "out" in out else next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


class Batches(torch.utils.data.Dataset):
    """Training batches generated from the task's ``train`` split (index = step * batch + i).

    Item ``step`` is the whole batch of that step, so a DataLoader worker generates the next
    batches while the current one trains, and the order never depends on the worker count.
    """

    def __init__(self, recipe: TrainRecipe, preprocess, eval_size: tuple[int, int], steps: int, final_steps: int):
        from edgeexport.datasets import get_dataset

        self.ds = get_dataset(recipe.dataset)
        self.recipe, self.pre, self.eval_size = recipe, preprocess, eval_size
        self.steps, self.final_steps = steps, final_steps

    def __len__(self) -> int:
        return self.steps

    def size_at(self, step: int) -> int:
        final = self.final_steps and step >= self.steps - self.final_steps
        return self.recipe.final_size if final else self.recipe.size

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.get(step, self.size_at(step))

    def get(self, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        r, ds = self.recipe, self.ds
        xs, ys = [], []
        for i in range(r.batch):
            index = step * r.batch + i
            if ds.task == "segmentation":  # a canvas at the evaluation's pixel scale
                image, mask = ds.sample("train", r.seed, index, size=(size, size), scale_ref=max(self.eval_size),
                                        shapes=TRAIN_SHAPES)
                xs.append(self.pre.normalize(image))
                ys.append(mask.astype(np.int64))
            else:  # generated at the size whose centre crop is the network input, like evaluation
                gen = round(size / self.pre.crop_fraction) if self.pre.resize_mode == "center_crop" else size
                image, label = ds.sample("train", r.seed, index, size=(gen, gen))
                xs.append(self.pre(image, size, size))
                ys.append(label)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.asarray(ys, dtype=np.int64))


def evaluate(model: torch.nn.Module, dataset: str, preprocess, size: tuple[int, int], count: int,
             split: str = "eval", seed: int = 0, batch: int = 8) -> dict:
    """Task metrics of an eager model on ``count`` samples of a split (what ``info`` reports)."""
    from edgeexport.datasets import get_dataset
    from edgeexport.datasets.labeled import from_builtin
    from edgeexport.metrics import TaskAccumulator

    ds = get_dataset(dataset)
    data = from_builtin(ds, split, seed, count)
    acc = TaskAccumulator(ds.task, ds.num_classes, "out", list(ds.classes))
    device = next(model.parameters()).device
    model.eval()
    h, w = size
    items = list(data)
    with torch.inference_mode():
        for k in range(0, len(items), batch):
            chunk = items[k:k + batch]
            x = np.stack([preprocess(im, h, w) for _, im, _ in chunk])
            labels = [preprocess.resize_mask(lab, h, w) for _, _, lab in chunk] if ds.task == "segmentation" \
                else [lab for _, _, lab in chunk]
            out = _first_output(model(torch.from_numpy(x).to(device))).float().cpu().numpy()
            acc.update(out, labels)
    res = acc.result()
    return res.model_dump(exclude={"classes"}, exclude_none=True)


def _fp16_round_trip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}


def save_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict) -> str:
    """Write a safetensors file (fp16 storage for floating tensors) atomically; returns its SHA-256."""
    import hashlib

    from safetensors.torch import save_file

    from edgeexport.util import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in _fp16_round_trip(state).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _precise_bn(model, batches: "Batches", first_index: int, size: int, count: int, device, cl) -> None:
    from edgeexport.weights import recalibrate_batchnorm

    with torch.no_grad():
        recalibrate_batchnorm(model, (batches.get(first_index + i, size)[0].to(device).contiguous(memory_format=cl)
                                      for i in range(count)))


def _validate(model, recipe, pre, eval_size, batches, step, size, device, cl) -> dict:
    """Metrics on a few ``val`` samples, with precise BatchNorm on a copy (training is not disturbed)."""
    import copy

    probe = copy.deepcopy(model)
    # Classification trains below the evaluation resolution (then fine-tunes at it): BatchNorm statistics
    # from the training size would misjudge the network at the evaluation size, so validate with both.
    bn_size = max(eval_size) if batches.ds.task == "classification" else size
    _precise_bn(probe, batches, 10_000_000 + step * 8, bn_size, VAL_BN_BATCHES, device, cl)
    return evaluate(probe.to(memory_format=torch.contiguous_format), recipe.dataset, pre, eval_size, VAL_IMAGES,
                    split="val")


def train(recipe: TrainRecipe, log=print, device: str | None = None, steps: int | None = None,
          checkpoint: Path | None = None, eval_images: int | None = None, eval_size: tuple[int, int] | None = None,
          workers: int = 1) -> tuple[dict, dict]:
    """Train from the recipe's seed; returns (state dict rounded to fp16 and back, metadata with metrics).

    ``checkpoint``: a file the run saves to every ``CHECKPOINT_EVERY`` steps and resumes from (the
    batches are a function of the step, so a resumed run sees the same data as an uninterrupted one).
    ``eval_size``: the evaluation input (default: the model's); ``workers``: batch-generating processes.
    """
    from edgeexport.zoo import build_model, get_meta

    steps = recipe.steps if steps is None else steps
    final_steps = min(recipe.final_steps, steps // 4) if recipe.final_size else 0
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    from edgeexport.datasets import get_dataset

    ds = get_dataset(recipe.dataset)
    meta = get_meta(recipe.model, ds.num_classes)
    eval_size = tuple(eval_size or meta.input_size[1:])
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    model = build_model(recipe.model, num_classes=ds.num_classes).to(device).train()
    cl = torch.channels_last if device == "cpu" else torch.contiguous_format
    model = model.to(memory_format=cl)
    from edgeexport.images import Preprocess

    pre = Preprocess(meta.mean, meta.std, meta.resize)
    batches = Batches(recipe, pre, eval_size, steps, final_steps)
    def make_loader(dataset):  # a worker generates the next batches while one trains (0: in this process)
        extra = dict(prefetch_factor=4, worker_init_fn=lambda _: torch.set_num_threads(1)) if workers else {}
        return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, **extra)

    loader = make_loader(batches)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=max(steps, 1),
                                                pct_start=recipe.warmup_pct)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255, label_smoothing=recipe.label_smoothing)
    t0 = time.perf_counter()
    losses, start, history, before, resumes = [], 0, [], 0.0, []  # before: minutes the checkpoint had trained
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        if saved.get("recipe") == json.dumps(recipe.to_dict()) and saved.get("steps") == steps:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])
            start, history = int(saved["step"]), json.loads(saved["history"])
            before = float(saved.get("minutes", float("nan")))  # nan: a checkpoint that did not record it
            resumes = [*json.loads(saved.get("resumes", "[]")), start]
            log(f"resumed {recipe.model} from {checkpoint} at step {start}")
            loader = make_loader(torch.utils.data.Subset(batches, range(start, steps)))
    for step, (x, y) in enumerate(loader, start=start):
        size = x.shape[-1]
        x, y = x.to(device).contiguous(memory_format=cl), y.to(device)
        loss = loss_fn(_first_output(model(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise RuntimeError(f"training diverged at step {step} (loss {losses[-1]})")
        if (step + 1) % 50 == 0 or step + 1 == steps:
            el = time.perf_counter() - t0
            done = step + 1 - start
            log(f"{recipe.model} step {step + 1}/{steps} size {size} loss {np.mean(losses[-50:]):.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} {el / 60:.1f} min (eta {el / done * (steps - step - 1) / 60:.1f})")
        if (step + 1) % CHECKPOINT_EVERY == 0 and step + 1 < steps:
            val = _validate(model, recipe, pre, eval_size, batches, step, size, device, cl)
            history.append({"step": step + 1, "loss": round(float(np.mean(losses[-50:])), 4), "val": val["value"]})
            log(f"{recipe.model} step {step + 1}: val {val['metric']} {val['value']:.4f} ({VAL_IMAGES} images)")
            if checkpoint is not None:
                from edgeexport.util import atomic_path

                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(checkpoint) as tmp:
                    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                                "step": step + 1, "steps": steps, "recipe": json.dumps(recipe.to_dict()),
                                "history": json.dumps(history),
                                "minutes": before + (time.perf_counter() - t0) / 60, "resumes": json.dumps(resumes)},
                               tmp)
    # Precise BatchNorm: MobileNetV3's BatchNorm momentum is 0.01 (torchvision's), so after a few
    # thousand steps its running statistics still remember the first, very different weights.
    # Re-estimate them as plain averages over training batches at the final training size.
    _precise_bn(model, batches, steps, batches.size_at(steps - 1), min(BN_BATCHES, steps), device, cl)
    model = model.to(memory_format=torch.contiguous_format).eval()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state = {k: v.float() if v.is_floating_point() else v for k, v in _fp16_round_trip(state).items()}
    model.load_state_dict(state)
    model = model.to(device)
    metrics = evaluate(model, recipe.dataset, pre, eval_size, eval_images or ds.eval_count)
    minutes = before + (time.perf_counter() - t0) / 60
    info = {"recipe": recipe.to_dict(), "steps_run": steps,
            "train_minutes": round(minutes, 1) if math.isfinite(minutes) else None,  # across resumes; None: unknown
            "resumed_at_steps": resumes,
            "validation": history,
            "device": device, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "final_loss": round(float(np.mean(losses[-50:])), 4) if losses else None,
            "eval": {**metrics, "split": "eval", "seed": 0, "input_size": list(eval_size)}}
    return state, info


def main(argv=None) -> None:
    import argparse

    from edgeexport.zoo import resolve_name

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--tag", default="shapes")
    ap.add_argument("--output", help="safetensors file (default: where `--weights MODEL:TAG` finds it)")
    ap.add_argument("--steps", type=int, help="override the recipe's step count (for a quick try)")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    run_training(resolve_name(args.model), args.tag, args.output, args.steps, args.threads)


def run_training(model: str, tag: str = "shapes", output: str | None = None, steps: int | None = None,
                 threads: int | None = None, log=print) -> tuple[Path, dict]:
    from edgeexport.zoo.pretrained import find_trained

    entry = find_trained(model, tag)
    recipe = entry.recipe if entry is not None else RECIPES.get(model)
    if recipe is None:
        raise UserError(f"no training recipe for {model} (known: {', '.join(RECIPES)})")
    if threads:
        torch.set_num_threads(threads)
    path = Path(output) if output else entry.path() if entry is not None else Path(f"{model}-{tag}.safetensors")
    state, info = train(recipe, log=log, steps=steps, checkpoint=path.with_name(path.name + ".checkpoint"))
    info["tag"] = tag
    digest = save_weights(state, path, {"edgeexport": info})
    path.with_name(path.name + ".checkpoint").unlink(missing_ok=True)
    log(f"wrote {path} (sha256 {digest[:16]}...): {json.dumps(info['eval'])}")
    return path, info


if __name__ == "__main__":
    main()
