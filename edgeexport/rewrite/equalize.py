"""Cross-layer equalization (Nagel et al., "Data-Free Quantization through Weight Equalization and Bias
Correction", ICCV 2019), exact up to fp32 rounding: a rewrite for models that int8 finds hard.

A per-tensor int8 scale is set by the tensor's widest channel. When one channel of an activation is 200x wider
than the others (a BatchNorm that scaled it up, the next layer's weights on it scaled down: the same float
function), every other channel gets a few of the 256 levels. Equalization moves the range between the two
layers: for a pair *producer -> positive-homogeneous activation -> consumer*, output channel ``i`` of the
producer is divided by ``s_i`` and input channel ``i`` of the consumer multiplied by it, with
``s_i = sqrt(r1_i / r2_i)`` (``r1_i``: the producer's weight range on that channel, its BatchNorm's scale
included; ``r2_i``: the consumer's). Both ranges become ``sqrt(r1_i * r2_i)``; ``f(x / s) = f(x) / s`` for
ReLU, LeakyReLU and the identity, so the function is unchanged.

* Producers: ``Conv2d`` / ``Linear``, optionally followed by a ``BatchNorm2d`` / ``BatchNorm1d`` (its affine
  weight and bias carry the scale, so nothing needs folding first). Consumers: ``Conv2d`` (any groups) /
  ``Linear``. Every tensor between them has exactly one user.
* ReLU6 and Hardtanh are **skipped, and said so**: their bounds are not positive-homogeneous (``min(x/s, 6) !=
  min(x, 6)/s``); the exact treatment would change the bound per channel, which ONNX's Clip cannot express.
* Chains (``a -> b -> c``) are swept a few times, as the paper does, so that a layer that is consumer of one
  pair and producer of the next converges.
* Pairs are found on the traced graph (``torch.fx``); a model that fx cannot trace falls back to neighbours
  inside an ``nn.Sequential``.

Bias absorption and bias correction are not done here: both need activation statistics (a data-free
rewrite cannot be exact for them).
"""
from __future__ import annotations

import torch
from torch import nn

from edgeexport.rewrite.modules import Outcome

HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout)
BOUNDED = (nn.ReLU6, nn.Hardtanh)
PRODUCERS = (nn.Conv2d, nn.Linear)
CONSUMERS = (nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm2d, nn.BatchNorm1d)
SWEEPS = 4
S_RANGE = (1e-6, 1e6)  # beyond it a channel is dead (all-zero weights) or degenerate: left alone


def _is_homogeneous_fn(node) -> bool:
    import torch.nn.functional as F

    return node.op == "call_function" and node.target in (F.relu, torch.relu, F.leaky_relu)


def _chains_fx(model: nn.Module) -> tuple[list[tuple[str, str | None, str]], list[str]]:
    """(producer, norm or None, consumer) names, and the skipped pairs (with why), from the traced graph."""
    import torch.fx as fx

    gm = fx.GraphModule(model, fx.Tracer().trace(model))
    modules = dict(gm.named_modules())
    mod = lambda n: modules.get(n.target) if isinstance(n, fx.Node) and n.op == "call_module" else None  # noqa: E731
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    chains, skipped = [], []
    for node in gm.graph.nodes:
        if not isinstance(mod(node), PRODUCERS) or len(node.users) != 1 or calls[node.target] != 1:
            continue
        cur, norm = next(iter(node.users)), None
        if isinstance(mod(cur), NORMS) and len(cur.users) == 1:
            norm, cur = cur.target, next(iter(cur.users))
        acts = 0
        while (isinstance(mod(cur), HOMOGENEOUS) or _is_homogeneous_fn(cur)) and len(cur.users) == 1 and acts < 3:
            cur, acts = next(iter(cur.users)), acts + 1
        if isinstance(mod(cur), BOUNDED):
            skipped.append(f"{node.target} -> {cur.target} ({type(mod(cur)).__name__} is bounded)")
            continue
        if isinstance(mod(cur), CONSUMERS) and calls[cur.target] == 1 and (norm is None or calls[norm] == 1):
            chains.append((node.target, norm, cur.target))
    return chains, skipped


def _chains_sequential(model: nn.Module) -> tuple[list[tuple[str, str | None, str]], list[str]]:
    chains, skipped = [], []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq.named_children())
        prefix = f"{name}." if name else ""
        for i, (a, m) in enumerate(kids):
            if not isinstance(m, PRODUCERS):
                continue
            j, norm = i + 1, None
            if j < len(kids) and isinstance(kids[j][1], NORMS):
                norm, j = prefix + kids[j][0], j + 1
            while j < len(kids) and isinstance(kids[j][1], HOMOGENEOUS):
                j += 1
            if j < len(kids) and isinstance(kids[j][1], BOUNDED):
                skipped.append(f"{prefix}{a} -> {prefix}{kids[j][0]} ({type(kids[j][1]).__name__} is bounded)")
            elif j < len(kids) and isinstance(kids[j][1], CONSUMERS):
                chains.append((prefix + a, norm, prefix + kids[j][0]))
    return chains, skipped


def _consumer_columns(w2: torch.Tensor, groups: int, channel_count: int) -> torch.Tensor:
    """The consumer's weights as ``[input channel, everything it multiplies]`` (grouped convolutions too)."""
    cout, cin_per = w2.shape[0], w2.shape[1]
    if groups * cin_per != channel_count:
        raise ValueError("channel counts differ")
    cout_per = cout // groups
    w = w2.reshape(groups, cout_per, cin_per, -1).permute(0, 2, 1, 3)  # [group, local input, out, kernel]
    return w.reshape(groups * cin_per, -1)


def _equalize_pair(producer, norm, consumer):
    """Equalize one pair in place; returns ``(scales, producer output ranges, consumer input-channel weight ranges)``,
    the ranges as they were before (None: left as it was)."""
    w1 = producer.weight.detach()
    c = w1.shape[0]
    groups = getattr(consumer, "groups", 1)
    try:
        cols = _consumer_columns(consumer.weight.detach(), groups, c)
    except ValueError:
        return None
    r1 = w1.reshape(c, -1).abs().amax(1).double()
    if norm is not None:
        if norm.weight is None or norm.running_var is None or norm.num_features != c:
            return None
        r1 = r1 * (norm.weight.detach().double() / (norm.running_var.double() + norm.eps).sqrt()).abs()
    r2 = cols.abs().amax(1).double()
    s = (r1 / r2).sqrt()
    ok = torch.isfinite(s) & (s > S_RANGE[0]) & (s < S_RANGE[1]) & (r1 > 0) & (r2 > 0)
    s = torch.where(ok, s, torch.ones_like(s))
    if torch.allclose(s, torch.ones_like(s), rtol=1e-3, atol=0):
        return None
    with torch.no_grad():
        inv = (1 / s)
        if norm is not None:  # the BatchNorm's affine output carries the scale
            norm.weight.mul_(inv.to(norm.weight.dtype))
            norm.bias.mul_(inv.to(norm.bias.dtype))
        else:
            producer.weight.mul_(inv.to(w1.dtype).reshape(-1, *([1] * (w1.dim() - 1))))
            if producer.bias is not None:
                producer.bias.mul_(inv.to(producer.bias.dtype))
        w2 = consumer.weight
        cin_per = w2.shape[1]
        scale = s.to(w2.dtype).reshape(groups, cin_per)  # input channel i -> (group, local index)
        cout_per = w2.shape[0] // groups
        per_out = scale.repeat_interleave(cout_per, dim=0)  # [cout, cin_per]
        w2.mul_(per_out.reshape(w2.shape[0], cin_per, *([1] * (w2.dim() - 2))))
    return s, r1, r2


def rewrite_equalize(model: nn.Module) -> Outcome:
    """Cross-layer equalization of every producer -> ReLU/LeakyReLU/identity -> consumer pair, in place."""
    notes: list[str] = []
    try:
        chains, skipped = _chains_fx(model)
    except Exception:  # a model fx cannot trace
        chains, skipped = _chains_sequential(model)
        notes.append("equalize: the model does not trace with torch.fx; only pairs inside nn.Sequential were "
                     "equalized")
    if skipped:
        notes.append(f"equalize: {len(skipped)} pair(s) left alone (a bounded activation, e.g. "
                     f"{skipped[0]}): ReLU6 and Hardtanh are not positive-homogeneous")
    modules = dict(model.named_modules())
    changed: dict[tuple, list] = {}  # (producer, consumer) -> [product of the scales, both ranges before the first]
    for _ in range(SWEEPS):
        moved = False
        for p, n, c in chains:
            done = _equalize_pair(modules[p], modules[n] if n else None, modules[c])
            if done is not None:
                scale, out_ranges, in_ranges = done
                record = changed.setdefault((p, c), [torch.ones_like(scale), out_ranges, in_ranges])
                record[0] = record[0] * scale
                moved = True
        if not moved:
            break
    notes += pair_notes(changed)
    return Outcome(len(changed), notes)


def pair_notes(changed: dict[tuple, list], shown: int = 8) -> list[str]:
    """Per pair, what was scaled: the channel scale factors' range, and how unbalanced the channels were before and
    after (widest over median) on both sides: the producer's output ranges and the consumer's weights per input
    channel; the most unbalanced pairs first."""
    def imbalance(r):
        return widest_over_median(r) or 1.0

    rows = sorted(((max(imbalance(out), imbalance(inp)), p, c, scale, out, inp)
                   for (p, c), (scale, out, inp) in changed.items()), key=lambda t: -t[0])
    notes = [f"equalize {p} -> {c}: {scale.numel()} channels scaled by {float(scale.min()):.3g}-{float(scale.max()):.3g}; "
             f"widest over median, output ranges {imbalance(out):.1f}x -> {imbalance(out / scale):.1f}x, consumer "
             f"weights {imbalance(inp):.1f}x -> {imbalance(inp * scale):.1f}x" for _, p, c, scale, out, inp in rows[:shown]]
    if len(rows) > shown:
        notes.append(f"equalize: {len(rows) - shown} more pair(s), each less unbalanced than these")
    return notes


def range_imbalance(model: nn.Module, batches) -> tuple[float, str | None]:
    """How unbalanced the tensors equalization would act on are: over every pair's middle tensor (the producer's
    output, after its BatchNorm), the widest channel's range (max of the positive part over ``batches``) over the
    median range of its live channels (a channel whose range is under 1e-3 of the widest is dead, as after a
    squeeze-and-excitation ReLU, and left out), and over every pair's consumer, the same ratio of its weights'
    ranges per input channel (:func:`input_channel_ranges`). Returns (the worst ratio, its module, with
    " (weights)" after a consumer's); (0, None) without pairs."""
    try:
        chains = _chains_fx(model)[0]
    except Exception:  # noqa: BLE001 (a model fx cannot trace)
        chains = _chains_sequential(model)[0]
    modules = dict(model.named_modules())
    ranges: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_m, _i, out):
            r = torch.relu(out.detach()).amax(dim=tuple(d for d in range(out.dim()) if d != 1))
            ranges[name] = torch.maximum(ranges[name], r) if name in ranges else r
        return record

    handles = [modules[n or p].register_forward_hook(hook(n or p)) for p, n, _ in chains]
    try:
        with torch.no_grad():
            for x in batches:
                model(torch.as_tensor(x))
    finally:
        for h in handles:
            h.remove()
    for _, _, consumer in chains:  # the mirror: one input channel's weights far larger than the others'
        ranges[f"{consumer} (weights)"] = input_channel_ranges(modules[consumer])
    worst: tuple[float, str | None] = (0.0, None)
    for name, r in ranges.items():
        ratio = widest_over_median(r)
        if ratio is not None and ratio > worst[0]:
            worst = (ratio, name)
    return worst


def widest_over_median(r: torch.Tensor) -> float | None:
    """The widest channel's range over the median range of the live channels (a channel under 1e-3 of the widest
    is dead, as after a squeeze-and-excitation ReLU, and left out); None when no channel is live."""
    alive = r[r > r.max() * 1e-3]
    return float(r.max() / alive.median()) if alive.numel() and alive.median() > 0 else None


def input_channel_ranges(layer: nn.Module) -> torch.Tensor:
    """The largest weight magnitude on each input channel of a conv / linear layer (within its group): an input
    channel whose weights are 200x the others' sets every per-output-channel int8 scale by itself."""
    w, groups = layer.weight.detach(), getattr(layer, "groups", 1)
    return _consumer_columns(w, groups, groups * w.shape[1]).abs().amax(1)
