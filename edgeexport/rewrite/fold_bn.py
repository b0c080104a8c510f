"""BatchNorm folded into the preceding convolution (eval mode), exact up to rounding.

Pairs are found on the traced graph (``torch.fx``): a ``Conv2d`` whose only user is a
``BatchNorm2d``, or a ``BatchNorm2d`` applied to the channel concatenation of convolutions that
feed nothing else (PyConv's pyramid levels: each level gets its slice of the BatchNorm), or a
``BatchNorm2d`` after a layer that knows how to absorb one (``fold_batchnorm(bn)``, e.g. HetConv,
whose grouped form ends in an Add that no exporter folds through). The convolution gets the folded weights and bias (torch's own
``fuse_conv_bn_eval`` math) and the BatchNorm becomes ``nn.Identity`` in the original module
tree, so the model keeps its structure and forward code. Models that fx cannot trace fall
back to ``nn.Sequential`` neighbours (Conv2d immediately followed by BatchNorm2d).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def _absorbs_bn(m: nn.Module) -> bool:
    return callable(getattr(m, "fold_batchnorm", None))


def _pairs_fx(model: nn.Module) -> list[tuple[list[str], str]]:
    import torch.fx as fx

    class Tracer(fx.Tracer):  # layers that fold a BatchNorm themselves stay opaque
        def is_leaf_module(self, m, qualname):
            return _absorbs_bn(m) or super().is_leaf_module(m, qualname)

    gm = fx.GraphModule(model, Tracer().trace(model))
    modules = dict(gm.named_modules())

    def lone_conv(n) -> bool:
        return (isinstance(n, fx.Node) and n.op == "call_module" and len(n.users) == 1
                and (isinstance(modules.get(n.target), nn.Conv2d) or _absorbs_bn(modules.get(n.target))))

    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if lone_conv(src):
            pairs.append(([src.target], node.target))
        elif (isinstance(src, fx.Node) and src.op == "call_function" and src.target is torch.cat
              and len(src.users) == 1 and src.kwargs.get("dim", src.args[1] if len(src.args) > 1 else 0) in (1, -3)
              and all(lone_conv(c) for c in src.args[0])):
            pairs.append(([c.target for c in src.args[0]], node.target))
    return pairs


def _pairs_sequential(model: nn.Module) -> list[tuple[list[str], str]]:
    pairs = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Sequential):
            kids = list(m.named_children())
            for (a, ma), (b, mb) in zip(kids, kids[1:]):
                if isinstance(ma, nn.Conv2d) and isinstance(mb, nn.BatchNorm2d):
                    prefix = f"{name}." if name else ""
                    pairs.append(([prefix + a], prefix + b))
    return pairs


def _set(model: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, value)


@torch.no_grad()
def rewrite_fold_bn(model: nn.Module) -> int:
    if model.training:
        raise ValueError("fold BatchNorm only in eval mode")
    try:
        pairs = _pairs_fx(model)
    except Exception:  # untraceable forward (data-dependent control flow): the conservative fallback
        pairs = _pairs_sequential(model)
    uses: dict[str, int] = {}
    for _, bn_name in pairs:
        uses[bn_name] = uses.get(bn_name, 0) + 1
    count = 0
    for conv_names, bn_name in pairs:
        if uses[bn_name] > 1:  # a BatchNorm module called at several places cannot be folded
            continue
        bn = model.get_submodule(bn_name)
        convs = [model.get_submodule(c) for c in conv_names]
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or \
                sum(c.out_channels for c in convs) != bn.num_features:
            continue
        if any(_absorbs_bn(c) for c in convs):
            if len(convs) != 1:
                continue
            convs[0].fold_batchnorm(bn)
            _set(model, bn_name, nn.Identity())
            count += 1
            continue
        start = 0
        for conv in convs:
            sl = slice(start, start + conv.out_channels)
            w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean[sl], bn.running_var[sl], bn.eps,
                                        bn.weight[sl], bn.bias[sl])
            conv.weight, conv.bias = w, b
            start += conv.out_channels
        _set(model, bn_name, nn.Identity())
        count += 1
    return count
