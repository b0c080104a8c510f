"""Exact ONNX graph preparations that let ONNX Runtime's int8 kernels run fused.

Each pass edits a ``ModelProto`` in place and returns how many nodes it changed.

* ``name_nodes``: every node gets a unique name (exclusion lists and reports refer to nodes by name).
* ``reduce_mean_to_gap``: ``ReduceMean`` over H and W with ``keepdims=1`` -> ``GlobalAveragePool``.
  The dynamo exporter emits ReduceMean for ``AdaptiveAvgPool2d(1)``; ONNX Runtime quantizes
  GlobalAveragePool to a fused ``QLinearGlobalAveragePool`` (and runs it in NCHWc / NHWC),
  but leaves ReduceMean in float between a DequantizeLinear / QuantizeLinear pair.
* ``densify_grouped_convs``: a grouped convolution whose groups have several channels (PyConv's
  5x5/g4, 7x7/g8, 9x9/g16 levels) becomes a dense convolution with block-diagonal weights.
  Exact (the off-diagonal weights are zeros, and quantize to exact zeros); more MACs, but ONNX
  Runtime's dense int8 kernels are so much faster than its grouped ones that PyConvResNet-50
  runs 2.7x faster in int8 (measured: grouped int8 conv levels 55 ms, dense 6 ms, 2 threads).
  True depthwise convolutions (one channel per group) are left alone: densifying them would
  multiply their work by the channel count.
* ``fold_bn_after_concat``: ``BatchNormalization`` applied to the concatenation of several
  convolutions (a PyConv level stack) is folded into those convolutions' weights and biases.
  Conv -> BN directly is already fused by onnxsim / ONNX Runtime; BN after Concat is not, and a
  float BN in the middle of an int8 graph costs a dequantize / quantize pair.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def name_nodes(model: onnx.ModelProto) -> int:
    seen, count = set(), 0
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            base = node.name or f"{node.op_type}_{node.output[0] if node.output else i}"
            name, k = base, 1
            while name in seen:
                name, k = f"{base}_{k}", k + 1
            node.name = name
            count += 1
        seen.add(node.name)
    return count


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Constant nodes holding a tensor become initializers (converters treat those uniformly)."""
    count = 0
    for node in list(model.graph.node):
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            model.graph.initializer.append(t)
            model.graph.node.remove(node)
            count += 1
    return count


def _initializers(model) -> dict:
    return {i.name: i for i in model.graph.initializer}


def _consumers(model) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def reduce_mean_to_gap(model: onnx.ModelProto) -> int:
    inits = _initializers(model)
    count = 0
    for node in model.graph.node:
        if node.op_type != "ReduceMean" or _attr(node, "keepdims", 1) != 1:
            continue
        axes = _attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1] in inits:
            axes = numpy_helper.to_array(inits[node.input[1]]).tolist()
        if axes is None or sorted(int(a) for a in axes) not in ([2, 3], [-2, -1]):
            continue
        node.op_type = "GlobalAveragePool"
        del node.input[1:]
        del node.attribute[:]
        count += 1
    return count


def fold_bn_after_concat(model: onnx.ModelProto) -> int:
    inits = _initializers(model)
    consumers = _consumers(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    graph_outputs = {o.name for o in model.graph.output}
    removed, count = [], 0
    for bn in list(model.graph.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        cat = producers.get(bn.input[0])
        if cat is None or cat.op_type != "Concat" or _attr(cat, "axis") not in (1, -3):
            continue
        if len(consumers.get(cat.output[0], [])) != 1 or cat.output[0] in graph_outputs:
            continue
        convs = [producers.get(i) for i in cat.input]
        if not all(c is not None and c.op_type == "Conv" and len(consumers.get(c.output[0], [])) == 1
                   and c.input[1] in inits for c in convs):
            continue
        if not all(i in inits for i in bn.input[1:5]):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in bn.input[1:5])
        scale = gamma / np.sqrt(var + _attr(bn, "epsilon", 1e-5))
        shift = beta - mean * scale
        start = 0
        for conv in convs:
            cout = inits[conv.input[1]].dims[0]
            _affine_into_conv(model, inits, conv, scale[start:start + cout], shift[start:start + cout], "bnfold")
            start += cout
        if start != len(scale):
            raise ValueError(f"{bn.name}: concatenated channels ({start}) != BatchNorm channels ({len(scale)})")
        cat.output[0] = bn.output[0]  # the Concat now produces the normalised tensor directly
        removed.append(bn)
        count += 1
    for bn in removed:
        model.graph.node.remove(bn)
    if count:
        _drop_unused_initializers(model)
    return count


def _affine_into_conv(model, inits: dict, conv, scale: np.ndarray, shift: np.ndarray, tag: str) -> None:
    """Make ``conv`` compute ``conv(x) * scale + shift`` (per output channel) with new weight and bias."""
    w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
    b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 else 0.0
    conv.input[1] = _const(model, f"{conv.name}_{tag}_w", w * scale.reshape(-1, *[1] * (w.ndim - 1)))
    bias = _const(model, f"{conv.name}_{tag}_b", b * scale + shift)
    if len(conv.input) > 2:
        conv.input[2] = bias
    else:
        conv.input.append(bias)


def _drop_unused_initializers(model) -> None:
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def densify_grouped_convs(model: onnx.ModelProto, max_groups: int = 64) -> int:
    inits = _initializers(model)
    count = 0
    for node in model.graph.node:
        groups = _attr(node, "group", 1)
        if node.op_type != "Conv" or groups <= 1 or groups > max_groups or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        cout, cin_g = w.shape[:2]
        if cin_g == 1 and cout == groups:  # depthwise: leave it
            continue
        dense = np.zeros((cout, cin_g * groups, *w.shape[2:]), w.dtype)
        og = cout // groups
        for g in range(groups):
            dense[g * og:(g + 1) * og, g * cin_g:(g + 1) * cin_g] = w[g * og:(g + 1) * og]
        name = f"{node.name}_dense_w"
        model.graph.initializer.append(numpy_helper.from_array(dense, name))
        node.input[1] = name
        for a in node.attribute:
            if a.name == "group":
                a.i = 1
        count += 1
    if count:
        _drop_unused_initializers(model)
    return count


def _const(model, name, value) -> str:
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    return name


def decompose_hardsigmoid(model: onnx.ModelProto) -> int:
    """``HardSigmoid(x) = Clip(alpha * x + beta, 0, 1)`` in operators that have int8 kernels.

    ONNX Runtime has no int8 HardSigmoid (nor HardSwish, which the exporters inline as
    ``x * HardSigmoid(x)``), so each one was a float island: dequantize, HardSigmoid, Mul,
    quantize, and around it the layout transposes of the NHWC int8 convolutions (measured on
    LR-ASPP: 46 Transposes and 36 DequantizeLinear costing more than every QLinearConv together).
    Decomposed, the quantizer maps Mul / Add to ``QLinearMul`` / ``QLinearAdd`` and removes the
    Clip into the [0, 1] range of its quantized output, so the activation stays in int8. Where
    ``x`` comes from a Conv used by nothing else (the squeeze-excite gate), ``alpha`` and ``beta``
    are folded into that Conv's weights and bias instead, leaving a bare Clip. Exact in real
    arithmetic (float rounding only).
    """
    inits = _initializers(model)
    consumers = _consumers(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    graph_outputs = {o.name for o in model.graph.output}
    nodes = list(model.graph.node)
    new_nodes, count = [], 0
    for node in nodes:
        if node.op_type != "HardSigmoid":
            new_nodes.append(node)
            continue
        alpha, beta = float(_attr(node, "alpha", 0.2)), float(_attr(node, "beta", 0.5))
        x, y, name = node.input[0], node.output[0], node.name or f"HardSigmoid_{node.output[0]}"
        lo, hi = _const(model, f"{name}_lo", 0.0), _const(model, f"{name}_hi", 1.0)
        conv = producers.get(x)
        if (conv is not None and conv.op_type == "Conv" and len(consumers.get(x, [])) == 1
                and x not in graph_outputs and conv.input[1] in inits
                and (len(conv.input) < 3 or conv.input[2] in inits)):
            cout = inits[conv.input[1]].dims[0]
            _affine_into_conv(model, inits, conv, np.full(cout, alpha), np.full(cout, beta), "hsig")
            new_nodes.append(helper.make_node("Clip", [x, lo, hi], [y], name=name))
        else:
            a = _const(model, f"{name}_alpha", alpha)
            b = _const(model, f"{name}_beta", beta)
            new_nodes += [helper.make_node("Mul", [x, a], [f"{name}_ax"], name=f"{name}_mul"),
                          helper.make_node("Add", [f"{name}_ax", b], [f"{name}_axb"], name=f"{name}_add"),
                          helper.make_node("Clip", [f"{name}_axb", lo, hi], [y], name=name)]
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        _drop_unused_initializers(model)
    return count


def _dequantized_constant(node, inits, producers):
    """The float value of a tensor that is an initializer, or a DequantizeLinear of initializers."""
    if node in inits:
        return numpy_helper.to_array(inits[node]).astype(np.float64)
    dq = producers.get(node)
    if dq is None or dq.op_type != "DequantizeLinear" or not all(i in inits for i in dq.input if i):
        return None
    q, scale = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in dq.input[:2])
    zp = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
    return (q - zp) * scale


def absorb_scalar_muls(model: onnx.ModelProto) -> int:
    """In a quantized QDQ graph, ``DQ(a) -> Mul(c) -> Q(b)`` with ``c`` a positive scalar becomes a
    rescaled ``DQ(a)``: the integers of ``b`` are those of ``a``, and the factor moves into the
    dequantization scale. Exact (it even skips a re-quantization) and it removes an int8 Mul per
    HardSigmoid decomposed by ``decompose_hardsigmoid``.
    """
    inits = _initializers(model)
    consumers = _consumers(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    graph_outputs = {o.name for o in model.graph.output}
    drop, count = set(), 0
    for mul in model.graph.node:
        if mul.op_type != "Mul" or mul.output[0] in graph_outputs:
            continue
        for k in (0, 1):
            c = _dequantized_constant(mul.input[1 - k], inits, producers)
            dq = producers.get(mul.input[k])
            if c is not None and c.size == 1 and float(c.reshape(())) > 0 and dq is not None:
                break
        else:
            continue
        if dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or dq.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]])
        users = consumers.get(mul.output[0], [])
        if scale.size != 1 or len(users) != 1 or users[0].op_type != "QuantizeLinear":
            continue
        q = users[0]
        if q.output[0] in graph_outputs or not all(u.op_type == "DequantizeLinear" for u in consumers.get(q.output[0], [])):
            continue
        name = f"{mul.name}_absorbed_scale"
        model.graph.initializer.append(
            numpy_helper.from_array((scale.astype(np.float64) * float(c.reshape(()))).astype(scale.dtype), name))
        for user in consumers[q.output[0]]:
            user.input[0], user.input[1], user.input[2] = dq.input[0], name, dq.input[2]
        drop |= {id(mul), id(q)}
        count += 1
    if count:
        keep = [n for n in model.graph.node if id(n) not in drop]
        used = {i for n in keep for i in n.input} | graph_outputs
        keep = [n for n in keep if n.op_type != "DequantizeLinear" or any(o in used for o in n.output)]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        _drop_unused_initializers(model)
    return count


def float_inputs(model: onnx.ModelProto, prepared: onnx.GraphProto, nodes: set[str]) -> dict[str, list[str]]:
    """Nodes kept in float read float tensors: an input a node of ``nodes`` reads through a QuantizeLinear ->
    DequantizeLinear pair (the quantizer puts one wherever the producer or another consumer is int8) is read
    from the float tensor of the ``prepared`` graph (before quantization) instead. Where the quantizer removed
    the activation that made that tensor (a Relu after a Conv: the QuantizeLinear's clamp does its work), the
    activation comes back, in float, for the float node alone. Other consumers keep the pair; a pair nothing
    reads any more is removed. Run on a QDQ graph. Returns, per node, the tensors it now reads in float."""
    producers = {o: n for n in model.graph.node for o in n.output}
    made = set(producers) | {i.name for i in model.graph.input}
    inits = {i.name for i in model.graph.initializer}
    before = {n.name: n for n in prepared.node}
    made_before = {o: n for n in prepared.node for o in n.output}
    changed: dict[str, list[str]] = {}
    for node in list(model.graph.node):
        orig = before.get(node.name)
        if node.name not in nodes or orig is None or len(orig.input) != len(node.input):
            continue
        for k, name in enumerate(node.input):
            dq = producers.get(name)
            q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits:
                continue  # not an activation's Q/DQ pair (a weight is stored int8, with no QuantizeLinear)
            want = orig.input[k]
            was, now = made_before.get(want), producers.get(want)
            # the float tensor is still made as it was (a graph input, or by the same node): read it as is
            as_made = (was is None and want in made) or (was is not None and now is not None and now.name == was.name)
            if not as_made and (was is not None and was.op_type in REMOVABLE and q.input[0] == want
                  and all(i in made or i in inits for i in was.input[1:] if i)):
                # the quantizer dropped the activation and gave its output's name to the tensor before it
                restored = onnx.NodeProto()
                restored.CopyFrom(was)
                restored.name = f"{was.name}_float_for_{node.name}"
                del restored.input[:]
                restored.input.extend([q.input[0], *was.input[1:]])
                want = f"{want}_float_for_{node.name}"
                del restored.output[:]
                restored.output.append(want)
                model.graph.node.append(restored)
            elif not as_made:
                continue  # the float tensor is not in the quantized graph: leave the pair
            node.input[k] = want
            changed.setdefault(node.name, []).append(orig.input[k])
    if changed:
        _drop_dead_qdq(model)
        _topological(model)
    return changed


REMOVABLE = {"Relu", "Clip"}  # activations ONNX Runtime's QDQ quantizer folds into the QuantizeLinear's clamp


def _topological(model) -> None:
    made = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    todo, order = list(model.graph.node), []
    while todo:
        ready = [n for n in todo if all(not i or i in made for i in n.input)]
        if not ready:
            raise ValueError("the graph has a cycle or reads a tensor nothing makes")
        for n in ready:
            made.update(n.output)
            order.append(n)
        todo = [n for n in todo if all(n is not r for r in ready)]
    del model.graph.node[:]
    model.graph.node.extend(order)


def _drop_dead_qdq(model) -> None:
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    _drop_unused_initializers(model)


PASSES = {"name_nodes": name_nodes, "reduce_mean_to_gap": reduce_mean_to_gap,
          "fold_bn_after_concat": fold_bn_after_concat, "densify_grouped_convs": densify_grouped_convs,
          "decompose_hardsigmoid": decompose_hardsigmoid}


def prepare_for_int8(model: onnx.ModelProto) -> dict[str, int]:
    """Run every pass; return the number of nodes each changed."""
    return {name: fn(model) for name, fn in PASSES.items()}
