"""Reading LiteRT flatbuffers: which ops XNNPACK takes (:func:`delegation`), what a file holds
(:func:`inspect_flatbuffer`), the module paths litert-torch records in tensor names, and the ops (and the
tensors they read) that a float set keeps out of int8 (:func:`float_scopes`). Native logs are silenced with
:func:`quiet_fds`."""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from edgeexport.provenance import match_modules, user_path, within

SIGNATURE = "serving_default"


@contextlib.contextmanager
def quiet_fds():
    """Silence what native code writes to file descriptors 1 and 2 (absl / TFLite logs); yields a
    function returning the captured text (converter errors are sometimes only there)."""
    import sys

    saved, captured = [], tempfile.TemporaryFile(mode="w+b")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        for fd in (1, 2):
            saved.append((fd, os.dup(fd)))
            os.dup2(captured.fileno(), fd)
    except OSError:  # no real descriptors (an embedding host): leave them alone
        pass

    def text() -> str:
        captured.flush()
        captured.seek(0)
        return captured.read().decode(errors="replace")

    try:
        yield text
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        captured.close()


def delegation(model: bytes | Path) -> tuple[int, Counter]:
    """How many XNNPACK partitions the default delegate makes, and the op types it leaves to the
    interpreter's own kernels.

    The interpreter lists a model's nodes and the delegate nodes that replaced them, not which were
    replaced: a node runs outside XNNPACK when what it produces is needed (a graph output, an input
    of a delegate node or of another such node) and no delegate node produces it."""
    from ai_edge_litert import interpreter as tfl

    src = {"model_path": str(model)} if isinstance(model, Path) else {"model_content": model}
    with quiet_fds():
        it = tfl.Interpreter(**src, num_threads=1)
        it.allocate_tensors()
    ops = it._get_ops_details()
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    produced = {int(t) for o in delegates for t in o["outputs"]}
    needed = {int(d["index"]) for d in it.get_output_details()} | {int(t) for o in delegates for t in o["inputs"]}
    outside: dict[int, str] = {}
    changed = True
    while changed:
        changed = False
        for o in ops:
            outs = {int(t) for t in o["outputs"]}
            if o["op_name"] != "DELEGATE" and o["index"] not in outside and outs & needed and not outs & produced:
                outside[o["index"]] = o["op_name"]
                needed |= {int(t) for t in o["inputs"] if t >= 0}
                changed = True
    return len(delegates), Counter(outside.values())


def inspect_flatbuffer(path: Path) -> dict:
    """What a file holds: its signature and I/O types, ops, tensor types, which ops compute in int8,
    and how XNNPACK takes it."""
    from ai_edge_litert import interpreter as tfl

    with quiet_fds():
        it = tfl.Interpreter(model_path=str(path),
                             experimental_op_resolver_type=tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
    signatures = it.get_signature_list()
    runner = it.get_signature_runner(SIGNATURE if SIGNATURE in signatures else next(iter(signatures)))

    def io(details: dict) -> dict[str, str]:
        out = {}
        for name, d in details.items():
            scale, zp = d["quantization"]
            out[name] = np.dtype(d["dtype"]).name + (f" (scale {scale:.4g}, zero point {zp})" if scale else "")
        return out

    ops = it._get_ops_details()
    is8 = lambda t: np.dtype(t) in (np.int8, np.uint8)  # noqa: E731
    compute = [o for o in ops if o["op_name"] not in ("QUANTIZE", "DEQUANTIZE")]
    int8 = [o for o in compute
            if o["operand_types"] and is8(o["operand_types"][0]) and all(map(is8, o["result_types"]))]
    partitions, outside = delegation(path)
    return {"inputs": io(runner.get_input_details()), "outputs": io(runner.get_output_details()),
            "op_count": len(ops), "ops": dict(Counter(o["op_name"] for o in ops).most_common()),
            "int8_ops": len(int8),
            "float_ops": dict(Counter(o["op_name"] for o in compute if o not in int8).most_common()),
            "tensor_dtypes": dict(Counter(np.dtype(t["dtype"]).name for t in it.get_tensor_details()).most_common()),
            "xnnpack_partitions": partitions, "outside_xnnpack": dict(outside.most_common())}


def tensor_modules(name: str) -> list[str]:
    """Every module path a litert-torch tensor name records (:func:`tensor_module` of each location)."""
    return [m for m in (tensor_module(loc) for loc in name.split(";;")) if m is not None]


def tensor_module(name: str) -> str | None:
    """The module path a litert-torch tensor name records. Names are the op's source locations, the op itself
    first (a fused conv + BN + ReLU lists the ReLU, then the others, ``;;``-separated); each location is the
    module stack as ``package.Class_attribute`` segments under the root's."""
    loc = re.sub(r";[^;/]*$", "", name.split(";;")[0])
    segments = loc.split("/")
    if len(segments) < 2:
        return None
    attrs = []
    for seg in segments[1:]:
        head = seg.rsplit(".", 1)[-1].lstrip("_")
        if "_" not in head:
            return None
        attrs.append(head.split("_", 1)[1])
    return user_path(".".join(attrs))


def float_scopes(fp32: bytes, modules: list[str]) -> tuple[dict[str, list[str]], set[str], dict[str, list[str]]]:
    """The ops of an fp32 flatbuffer that come from each of ``modules`` (by the module stacks litert-torch
    writes into tensor names; a fused conv + BN + activation belongs to each module it names), as
    ``({module: [op descriptions]}, {op scopes}, {module: [tensors it reads, left float, as writer module#tensor index]})`` for :func:`_recipe`.
    A float op still reads an int8 tensor when the op that writes it is int8 (a DEQUANTIZE in between), so the
    writer of every tensor a float module reads is kept in float too: the tensor stays float, and an int8 reader
    of the same tensor gets its own QUANTIZE."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    model = fu.read_model(bytearray(fp32))
    graph = model.subgraphs[0]
    codes = [getattr(fu.TFL_OP_CODE_TO_NAME.get(c.builtinCode), "value", str(c.builtinCode)) for c in model.operatorCodes]
    paths, scope_of, key_of, writer = {}, {}, {}, {}
    for i, op in enumerate(graph.operators):
        names = [fu.get_tensor_name(graph.tensors[t]) for t in op.outputs if t != -1]
        found = [m for n in names for m in tensor_modules(n)]
        key_of[i] = key = f"{codes[op.opcodeIndex]}#{i}"
        paths[key] = next((m for m in found if within(m, modules)), found[0] if found else None)
        scope_of[key] = fu.get_op_scope(op, graph.tensors)
        writer.update({t: i for t in op.outputs if t != -1})
    hits = match_modules(modules, paths)
    inside = {k for ops in hits.values() for k in ops}
    tensors: dict[str, list[str]] = {}
    for module, ops in hits.items():
        for i in (int(k.rsplit("#", 1)[1]) for k in ops):
            for t in graph.operators[i].inputs:
                if t in writer and key_of[writer[t]] not in inside:
                    inside.add(key_of[writer[t]])
                    name = fu.get_tensor_name(graph.tensors[t])
                    tensors.setdefault(module, []).append(f"{tensor_module(name) or name}#{t}")
    return hits, {scope_of[k] for k in inside}, tensors
