"""Where an operator comes from: the PyTorch module (path and class) that produced it.

Converters name the operator they refuse (an aten op, an ONNX op type, an ncnn layer); users need the
module it sits in. Two sources of that truth:

* an ``torch.export`` program, whose nodes carry ``nn_module_stack`` (the path of every module the op
  was called in, with its class);
* an ONNX graph from the dynamo exporter, whose nodes carry the same as ``pkg.torch.onnx.name_scopes`` /
  ``pkg.torch.onnx.class_hierarchy`` metadata (the ONNX target keeps it through onnxsim), or, from the
  TorchScript exporter, node names like ``/layers.0/attn/MatMul``.

Paths are given relative to the user's model: the wrappers edgeexport puts around it to name its inputs
and outputs (``model.`` of :class:`~edgeexport.source.NamedOutputs`, ``inner.`` of LiteRT's) are dropped.
"""
from __future__ import annotations

import ast
import re

from edgeexport.errors import UserError

WRAPPERS = ("inner.", "model.")  # attribute chains of edgeexport's own wrappers, outermost first


def user_path(path: str) -> str:
    """A module path inside edgeexport's wrappers, as a path inside the user's model ("" is the model)."""
    for prefix in WRAPPERS:
        if path == prefix[:-1]:
            return ""
        if path.startswith(prefix):
            path = path[len(prefix):]
    return path


def describe(path: str, cls: str | None) -> str:
    """``layers.0.blocks.1.attn (WindowAttention)``; the model itself is ``the model's forward``."""
    short = cls.rsplit(".", 1)[-1] if cls else None
    where = path or "the model's own forward"
    return f"{where} ({short})" if short else where


OVERLOADS = {"default", "Tensor", "Scalar", "int", "self", "out", "vec", "dim", "using_ints", "input"}


def op_name(op: str) -> str:
    """An operator's bare name, however a converter spells it: ``aten.roll.default``, ``aten::roll``,
    ``torch.ops.aten.roll.default``, ``Tensor.roll``, ``torch.roll``, ``F.roll`` -> ``roll``."""
    parts = [p for p in str(op).replace("::", ".").split(".") if p and p not in OVERLOADS]
    return parts[-1] if parts else str(op)


# ---------------------------------------------------------------- torch.export programs


def export_program(module, sample):
    """``torch.export`` of the module on one sample (non-strict, as every converter here uses it)."""
    import torch

    return torch.export.export(module, (sample,), strict=False)


def stack_path(node) -> str | None:
    """The path of the innermost module a torch.export node was called in, as the exported module names it
    (edgeexport's wrappers included; :func:`user_path` drops them). None: the model's forward, or no record."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0].removeprefix("L['self'].") if stack else None


def node_module(node) -> str | None:
    """The innermost module a torch.export node was called in, described (None: the model's forward)."""
    path = stack_path(node)
    if path is None:
        return None
    cls = list(node.meta["nn_module_stack"].values())[-1][1]
    cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
    return describe(user_path(path), cls_name)


def locate_aten(program, op: str) -> str | None:
    """The module of the first node of ``program`` that calls ``op`` (any overload)."""
    want = op_name(op)
    for node in program.graph.nodes:
        if node.op == "call_function" and op_name(str(node.target)) == want:
            return node_module(node) or describe("", None)
    return None


def locate_in_torch(module, sample, op: str) -> str | None:
    """:func:`locate_aten` on a fresh export of ``module``, then on its core-ATen decomposition (what the
    converters see: ``special_erfinv`` becomes ``erfinv``). None when it does not export, or has no such op."""
    try:
        program = export_program(module, sample)
        return locate_aten(program, op) or locate_aten(program.run_decompositions(), op)
    except Exception:
        return None


# ---------------------------------------------------------------- ONNX graphs


def onnx_node_scope(node) -> tuple[str, str | None] | None:
    """(path in the user's model, class name or None) of the module an ONNX node comes from: the dynamo
    exporter's name scopes, else a TorchScript node name; None when the node records neither."""
    meta = {p.key: p.value for p in node.metadata_props}
    scopes = meta.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            names = ast.literal_eval(scopes)
            classes = ast.literal_eval(meta.get("pkg.torch.onnx.class_hierarchy", "[]"))
        except (ValueError, SyntaxError):
            names, classes = [], []
        mods = [(n, c) for n, c in zip(names, classes) if not c.startswith("aten.")]
        if len(mods) > 1 or (mods and mods[-1][0]):
            path, cls = mods[-1]
            return user_path(path), cls
    m = re.match(r"^/(.+)/[^/]+$", node.name or "")  # TorchScript: /model/layers.0/attn/MatMul
    if m:
        return user_path(torchscript_path(m.group(1).split("/"))), None
    return None


def torchscript_path(segments: list[str]) -> str:
    """The module path of a TorchScript node name's scopes: a child of a container is named with its parent's
    name in front (``/model/features/features.12/features.12.2/Conv`` is ``model.features.12.2``), any other
    child by its attribute name (``/model/layer1/layer1.0/conv1/Conv`` is ``model.layer1.0.conv1``). An
    attribute name holds no dot, so a segment with one is always the prefixed form."""
    parts: list[str] = []
    prev = None
    for seg in segments:
        if prev is not None and seg.startswith(prev + "."):
            parts.append(seg[len(prev) + 1:])
        else:
            parts.append(seg)
        prev = seg
    return ".".join(parts)


def onnx_scopes(graph) -> dict[str, str]:
    """Module path of the user's model for every node name and output tensor of an ONNX graph whose node
    records one (what the per-layer diff, the profilers and the int8 float sets look nodes up by)."""
    out = {}
    for node in graph.node:
        scope = onnx_node_scope(node)
        if scope:
            out.update({k: scope[0] for k in (node.name, *node.output) if k})
    return out


def onnx_node_module(node) -> str | None:
    """The module an ONNX node comes from, described (see :func:`onnx_node_scope`)."""
    scope = onnx_node_scope(node)
    return describe(*scope) if scope else None


def locate_onnx(graph, op_type: str) -> str | None:
    """The module of the first node of an ONNX graph with ``op_type``."""
    for node in graph.node:
        if node.op_type == op_type:
            return onnx_node_module(node) or f"ONNX node {node.name}"
    return None


def keep_scopes(before, after) -> int:
    """Copy each node's metadata (its module scopes) from ``before`` to the node of the same name in ``after``
    (graph optimisers such as onnxsim drop it); returns how many nodes kept it."""
    props = {n.name: list(n.metadata_props) for n in before.graph.node if n.name and n.metadata_props}
    kept = 0
    for node in after.graph.node:
        name = node.name if node.name in props else node.name.removesuffix("_quant")  # QLinear* of ONNX Runtime
        if name in props and not node.metadata_props:
            node.metadata_props.extend(props[name])
            kept += 1
    return kept


def refused_op(text: str, patterns) -> str | None:
    """The operator a converter's error names as the one it cannot take (by the converter's own wording, each
    target's ``patterns``: regexes with one group), or None when the error is something else."""
    for pattern in patterns:
        m = re.search(pattern, text)
        if m:
            parts = m.group(1).split(".")
            while len(parts) > 1 and parts[-1] in OVERLOADS:  # aten.erfinv.default -> aten.erfinv
                parts.pop()
            return ".".join(parts)
    return None


GROUP = "+"  # joins modules kept in float together: a conv and the norm / activation a runtime fused into it


def within(path: str | None, modules) -> str | None:
    """The entry of ``modules`` whose scope holds ``path`` (the module itself or one inside it; an entry
    ``a+b`` holds what either holds), or None."""
    if path is None:
        return None
    return next((m for m in modules if any(path == p or path.startswith(p + ".") for p in m.split(GROUP))), None)


def match_modules(modules, paths: dict[str, str | None], flag: str = "--float-module") -> dict[str, list[str]]:
    """Which of ``paths`` (an operator's name -> the module it comes from) lies in each of ``modules``:
    ``{module: [operator names]}``. An entry ``conv+bn`` is a group: the operators of either (a converter gives a
    conv with a folded BatchNorm the BatchNorm's scope, or the conv's: the group holds both ways). A module that
    no operator comes from is bad input, named with the modules near it (a typo, or a module the converter
    folded into another)."""
    hits: dict[str, list[str]] = {m: [] for m in modules}
    for name, path in paths.items():
        m = within(path, modules)
        if m is not None:
            hits[m].append(name)
    for module, names in hits.items():
        if not names:
            first = module.split(GROUP)[0]
            parent = first.rsplit(".", 1)[0] if "." in first else ""
            known = sorted({p for p in paths.values() if p and (not parent or p.startswith(parent + "."))})
            raise UserError(f"{flag} {module}: no operator of the artifact comes from that module (a conv whose "
                            f"BatchNorm the converter folded is found under the BatchNorm's path; modules here: "
                            f"{', '.join(known[:6]) or 'none'})")
    return hits
