"""TensorRT cannot be imported here, so every TensorRT name edgeexport uses is checked against
manifests of the real Python bindings (tests/fixtures/tensorrt_api: 10.0, 10.16 and 11.4, made
from NVIDIA's wheels by make_manifest.py, see its README).

The checker walks the source with ``ast`` and follows TensorRT objects by how they were obtained
(``trt.Builder(logger)`` is a Builder, ``builder.create_builder_config()`` returns what the
binding's signature says: IBuilderConfig, ...), so every ``trt.X``, ``trt.X.Y`` and every member
used on a TensorRT object is looked up in its class, and every call is matched against the
binding's overloads (positional count, keyword names, required parameters). Names looked up
optionally (``getattr(obj, "NAME", default)``, ``hasattr``) may be missing in a version.
"""
from __future__ import annotations

import ast
import enum
import io
import json
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "tensorrt_api"
PACKAGE = ROOT / "edgeexport"
MANIFESTS = {p.stem.removeprefix("tensorrt-"): json.loads(p.read_text())
             for p in sorted(FIXTURES.glob("tensorrt-*.json"))}
V10_OLDEST, V10_NEWEST, V11 = "10.0.1", "10.16.1.11", "11.4.0.106"

# What TensorRT 11 removed (weak typing, calibration, implicit quantization, the old memory query).
REMOVED_IN_11 = [
    ("BuilderFlag", n) for n in ("FP16", "INT8", "FP8", "BF16", "INT4", "FP4",
                                 "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS")
] + [("IBuilderConfig", n) for n in ("int8_calibrator", "set_calibration_profile", "get_calibration_profile",
                                     "set_quantization_flag", "clear_quantization_flag", "get_quantization_flag",
                                     "quantization_flags", "algorithm_selector")] + [
    ("ICudaEngine", "device_memory_size"), ("ITensor", "set_dynamic_range"), ("ILayer", "precision"),
    ("ILayer", "set_output_type"), ("Builder", "platform_has_fast_fp16"), ("Builder", "platform_has_fast_int8"),
    ("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH"), ("", "IInt8EntropyCalibrator2"), ("", "QuantizationFlag")]

# Source-level patterns none of edgeexport's code may contain (docstrings and comments aside).
# DIRECT_IO is a weak-typing flag too; 11.4 still lists it, the project does not use it.
FORBIDDEN = re.compile(
    r"BuilderFlag\s*\.\s*(FP16|INT8|FP8|BF16|INT4|FP4|DIRECT_IO|(OBEY|PREFER)_PRECISION_CONSTRAINTS)\b"
    r"|\bint8_calibrator\b|\bIInt8\w*Calibrator\w*|\b(set|get)_calibration_profile\b|\bquantization_flags?\b"
    r"|\b(set|clear|get)_quantization_flag\b|\bdevice_memory_size\b(?!_v2)|\bplatform_has_fast_(fp16|int8)\b"
    r"|\bset_dynamic_range\b|\bEXPLICIT_BATCH\b|\bCalibrationAlgoType\b")


# ---------------------------------------------------------------- the checker


class Api:
    """One manifest: module names, classes (members with kinds, signatures, return types)."""

    def __init__(self, manifest: dict):
        self.m = manifest
        self.classes = manifest["classes"]

    def cls(self, name: str | None) -> dict | None:
        return self.classes.get(name) if name else None

    def type_of(self, ret: str | None):
        ret = (ret or "").removeprefix("ILogger.")
        name = ret if ret in self.classes else f"ILogger.{ret}" if f"ILogger.{ret}" in self.classes else None
        return ("inst", name) if name else None


@dataclass
class Use:
    line: int
    name: str            # "trt.X" or "Class.member"
    optional: bool = False
    problem: str | None = None


@dataclass
class Checker(ast.NodeVisitor):
    api: Api
    uses: list[Use] = field(default_factory=list)
    types: dict[str, set] = field(default_factory=dict)   # variable -> class names it was bound to
    trt_params: tuple = ("trt",)                          # a parameter of this name is the module

    @property
    def problems(self) -> list[Use]:
        return [u for u in self.uses if u.problem]

    def run(self, source: str) -> Checker:
        self.env, self.self_env = {}, {}
        self.visit(ast.parse(source))
        return self

    # -- bookkeeping
    def _bind(self, name: str, t) -> None:
        if t and t[0] == "inst":
            self.types.setdefault(name, set()).add(t[1])

    def _use(self, node, name, problem=None, optional=False):
        self.uses.append(Use(node.lineno, name, optional, None if optional else problem))

    # -- statements
    def visit_Import(self, node):
        for a in node.names:
            if a.name == "tensorrt":
                self.env[a.asname or "tensorrt"] = ("module",)

    def visit_ImportFrom(self, node):
        if node.module == "tensorrt":
            for a in node.names:
                self.env[a.asname or a.name] = self._module_attr(node, a.name)

    def visit_FunctionDef(self, node):
        outer = self.env
        self.env = dict(outer)
        for a in node.args.args + node.args.kwonlyargs:
            self.env[a.arg] = ("module",) if a.arg in self.trt_params else ("self",) if a.arg == "self" else None
        for stmt in node.body:
            self.visit(stmt)
        self.env = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        outer = self.self_env
        self.self_env = {}
        for stmt in node.body:
            self.visit(stmt)
        self.self_env = outer

    def _assign(self, target, t):
        if isinstance(target, ast.Name):
            self.env[target.id] = t
            self._bind(target.id, t)
        elif isinstance(target, ast.Attribute) and self.expr(target.value) == ("self",):
            self.self_env[target.attr] = t
            self._bind("self." + target.attr, t)
        elif isinstance(target, ast.Attribute):      # obj.prop = value: the property must exist and be settable
            self._attribute(target, store=True)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self._assign(elt, None)
        else:
            self.expr(target)

    def visit_Assign(self, node):
        t = self.expr(node.value)
        for target in node.targets:
            self._assign(target, t)

    def visit_AnnAssign(self, node):
        self._assign(node.target, self.expr(node.value) if node.value else None)

    def visit_For(self, node):
        it = self.expr(node.iter)
        self._assign(node.target, it[1] if it and it[0] == "list" else None)
        for stmt in node.body + node.orelse:
            self.visit(stmt)

    def generic_visit(self, node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.expr(child)
            else:
                self.visit(child)

    # -- expressions: returns ("module",) | ("class", C) | ("inst", C) | ("bound", C, m) | ("func", f)
    #    | ("list", T) | ("self",) | None, recording every TensorRT name on the way
    def expr(self, node):
        if isinstance(node, ast.Name):
            return self.env.get(node.id)
        if isinstance(node, ast.Attribute):
            return self._attribute(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.ListComp):
            outer = self.env
            self.env = dict(outer)
            for gen in node.generators:
                it = self.expr(gen.iter)
                self._assign(gen.target, it[1] if it and it[0] == "list" else None)
                for cond in gen.ifs:
                    self.expr(cond)
            elt = self.expr(node.elt)
            self.env = outer
            return ("list", elt)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.expr(child)
            elif isinstance(child, ast.comprehension):
                self.expr(child.iter)
                self.expr(child.target)
                for cond in child.ifs:
                    self.expr(cond)
        return None

    def _module_attr(self, node, name, optional=False):
        kind = self.api.m["module"].get(name)
        self._use(node, f"trt.{name}", None if kind else f"trt.{name} does not exist", optional)
        if kind == "class":
            return ("class", name)
        if kind == "function":
            return ("func", name)
        return None

    def _member(self, node, t, name, optional=False, store=False):
        cname = t[1]
        cls = self.api.cls(cname)
        info = (cls or {}).get("members", {}).get(name)
        problem = None if info else f"{cname}.{name} does not exist"
        if info and store and (info["k"] != "prop" or info.get("ro")):
            problem = f"{cname}.{name} cannot be assigned"
        self._use(node, f"{cname}.{name}", problem, optional)
        if not info:
            return None
        if info["k"] == "value":
            return ("inst", info["cls"])
        if info["k"] == "class":
            return ("class", info["cls"])
        if info["k"] in ("method", "static"):
            return ("bound", cname, name)
        if info["k"] == "prop" and t[0] == "inst":
            return self.api.type_of(info.get("ret"))
        return None

    def _attribute(self, node, optional=False, store=False, name=None):
        t = self.expr(node.value)
        name = name or node.attr
        if t == ("self",):
            return self.self_env.get(name)
        if t == ("module",):
            return self._module_attr(node, name, optional)
        if t and t[0] in ("class", "inst"):
            return self._member(node, t, name, optional, store)
        return None

    def _call(self, node):
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr") and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            optional = func.id == "hasattr" or len(node.args) == 3
            fake = ast.Attribute(value=node.args[0], attr=node.args[1].value, lineno=node.lineno)
            t = self._attribute(fake, optional=optional)
            for arg in node.args[2:]:
                self.expr(arg)
            return t if func.id == "getattr" else None
        t = self.expr(func)
        for arg in node.args:
            self.expr(arg.value if isinstance(arg, ast.Starred) else arg)
        for kw in node.keywords:
            self.expr(kw.value)
        if not t:
            return None
        if t[0] == "class":
            sigs = self.api.cls(t[1]).get("init")
            self._signature(node, f"{t[1]}()", sigs)
            return ("inst", t[1])
        if t[0] == "bound":
            sigs = self.api.cls(t[1])["members"][t[2]].get("sig")
            ok = self._signature(node, f"{t[1]}.{t[2]}()", sigs)
            return self.api.type_of((ok or [[None, None]])[0][1])
        if t[0] == "func":
            sigs = self.api.m["functions"].get(t[1])
            ok = self._signature(node, f"trt.{t[1]}()", sigs)
            return self.api.type_of((ok or [[None, None]])[0][1])
        return None

    def _signature(self, node, name, sigs):
        """Overloads that accept this call's arguments; records a problem when none does."""
        if not sigs or any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            return sigs
        npos, kws = len(node.args), {k.arg for k in node.keywords}
        ok = []
        for params, ret in sigs:
            if "*args" in params:
                ok.append((params, ret))
                continue
            names = [p.rstrip("=") for p in params]
            required = {p for p in params if not p.endswith("=")}
            given = set(names[:npos]) | kws
            if npos <= len(names) and kws <= set(names[npos:]) and required <= given:
                ok.append((params, ret))
        if not ok:
            self._use(node, name, f"{name} called with {npos} positional and {sorted(kws)} keyword arguments; "
                                  f"the binding takes {[p for p, _ in sigs]}")
        return ok


def check(source: str, version: str) -> Checker:
    return Checker(Api(MANIFESTS[version])).run(source)


def code_only(source: str) -> str:
    """``source`` without comments and docstrings (kept line for line)."""
    lines = source.splitlines(keepends=True)
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            for i in range(body[0].lineno - 1, body[0].end_lineno):
                lines[i] = "\n"
    out = []
    for tok in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
        if tok.type != tokenize.COMMENT:
            out.append(tok)
    return tokenize.untokenize(out)


def tensorrt_sources() -> dict[str, str]:
    """Every module of edgeexport that imports tensorrt."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if (isinstance(node, ast.Import) and any(a.name == "tensorrt" for a in node.names)) or \
                    (isinstance(node, ast.ImportFrom) and node.module == "tensorrt"):
                found[str(path.relative_to(ROOT))] = text
                break
    return found


# ---------------------------------------------------------------- the manifests


def test_manifests_are_the_versions_we_support():
    assert {V10_OLDEST, V10_NEWEST, V11} <= set(MANIFESTS)
    for version, m in MANIFESTS.items():
        assert m["version"] == version and len(m["sha256"]) == 64
        assert len(m["classes"]) > 100 and {"Builder", "IBuilderConfig", "ICudaEngine"} <= set(m["classes"])
        assert m["module"]["__version__"] == "str"


@pytest.mark.parametrize("cls, name", REMOVED_IN_11)
def test_removed_names_are_in_10_and_not_in_11(cls, name):
    def has(version):
        m = MANIFESTS[version]
        return name in m["module"] if not cls else name in m["classes"].get(cls, {}).get("members", {})
    assert has(V10_NEWEST), f"{cls}.{name} is not in {V10_NEWEST}: not a removal"
    assert not has(V11), f"{cls}.{name} is still in {V11}"


# ---------------------------------------------------------------- edgeexport's TensorRT code


SOURCES = tensorrt_sources()
# the objects the code holds, as the checker must have typed them (so no use escapes the lookup)
EXPECTED_TYPES = {"logger": "Logger", "builder": "Builder", "network": "INetworkDefinition",
                  "parser": "OnnxParser", "e": "ParserError", "config": "IBuilderConfig",
                  "profile": "IOptimizationProfile", "tensor": "ITensor", "cache": "ITimingCache",
                  "serialized": "IHostMemory", "mode": "TensorIOMode", "self.logger": "Logger",
                  "self.runtime": "Runtime", "self.engine": "ICudaEngine", "self.context": "IExecutionContext"}


def test_the_tensorrt_modules_are_found():
    assert "edgeexport/targets/tensorrt/__init__.py" in SOURCES


@pytest.mark.parametrize("version", [V11, V10_NEWEST, V10_OLDEST])
def test_edgeexport_uses_only_names_of(version):
    for path, source in SOURCES.items():
        checker = check(source, version)
        problems = [f"{path}:{u.line}: {u.problem}" for u in checker.problems]
        assert not problems, "\n".join(problems)
        if path.endswith("targets/tensorrt/__init__.py"):
            for var, cls in EXPECTED_TYPES.items():
                assert checker.types.get(var) == {cls}, (var, checker.types.get(var))
            used = {u.name for u in checker.uses}
            for name in ("trt.Builder", "Builder.create_network", "Builder.build_serialized_network",
                         "OnnxParser.parse_from_file", "ParserError.node_name", "IBuilderConfig.set_timing_cache",
                         "IBuilderConfig.set_memory_pool_limit", "MemoryPoolType.WORKSPACE",
                         "IOptimizationProfile.set_shape", "ITimingCache.serialize", "Runtime.deserialize_cuda_engine",
                         "ICudaEngine.get_tensor_mode", "IExecutionContext.execute_async_v3",
                         "IExecutionContext.set_tensor_address", "trt.nptype", "trt.__version__"):
                assert name in used, name
            assert len(used) >= 40


def test_optional_lookups_are_the_strong_typing_flag():
    uses = [u for u in check(SOURCES["edgeexport/targets/tensorrt/__init__.py"], V11).uses if u.optional]
    assert [u.name for u in uses] == ["NetworkDefinitionCreationFlag.STRONGLY_TYPED"]
    flags = {v: MANIFESTS[v]["classes"]["NetworkDefinitionCreationFlag"]["enum"] for v in MANIFESTS}
    assert "STRONGLY_TYPED" in flags[V10_OLDEST] and "STRONGLY_TYPED" in flags[V10_NEWEST]


def test_no_removed_api_anywhere_in_edgeexport():
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for i, line in enumerate(code_only(path.read_text()).splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)


# ---------------------------------------------------------------- the checker can fail

BAD = '''
import tensorrt as trt

def build(onnx_path):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.int8_calibrator = None
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatches=False)
    engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    engine.num_io_tensors = 3
    return engine.device_memory_size, engine.device_memory_size_v2, getattr(trt.BuilderFlag, "FP8", None)
'''


def test_checker_reports_removed_and_wrong_uses():
    problems = {u.name: u.problem for u in check(BAD, V11).problems}
    assert set(problems) == {"NetworkDefinitionCreationFlag.EXPLICIT_BATCH", "BuilderFlag.FP16",
                             "IBuilderConfig.int8_calibrator", "IBuilderConfig.set_timing_cache()",
                             "ICudaEngine.num_io_tensors", "ICudaEngine.device_memory_size"}, problems
    assert "ignore_mismatches" in problems["IBuilderConfig.set_timing_cache()"]
    assert "cannot be assigned" in problems["ICudaEngine.num_io_tensors"]
    # 10.16 has every removed name; the wrong keyword and the read-only property are still wrong
    assert {u.name for u in check(BAD, V10_NEWEST).problems} == {
        "IBuilderConfig.set_timing_cache()", "ICudaEngine.num_io_tensors"}
    # 10.0 has no device_memory_size_v2 yet
    assert "ICudaEngine.device_memory_size_v2" in {u.name for u in check(BAD, V10_OLDEST).problems}


def test_checker_optional_lookups():
    src = ("import tensorrt as trt\n"
           "a = getattr(trt.NetworkDefinitionCreationFlag, 'NO_SUCH_FLAG', None)\n"
           "b = hasattr(trt.ICudaEngine, 'no_such_member')\n"
           "c = getattr(trt.NoSuchEnum, 'X', None)\n"
           "d = getattr(trt.BuilderFlag, 'FP16')\n"
           "e = trt.NetworkDefinitionCreationFlag.NO_SUCH_FLAG\n")
    problems = sorted((u.line, u.name) for u in check(src, V11).problems)
    assert problems == [(4, "trt.NoSuchEnum"), (5, "BuilderFlag.FP16"),
                        (6, "NetworkDefinitionCreationFlag.NO_SUCH_FLAG")]


def test_checker_signatures():
    src = ("import tensorrt as trt\n"
           "def f(logger):\n"
           "    builder = trt.Builder()\n"                      # logger is required
           "    parser = trt.OnnxParser(builder.create_network(), logger)\n"
           "    parser.parse_from_file('m.onnx', 1)\n"          # one positional too many
           "    profile = builder.create_optimization_profile()\n"
           "    profile.set_shape('x', (1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8))\n")
    assert [(u.line, u.name) for u in check(src, V11).problems] == [
        (3, "Builder()"), (5, "OnnxParser.parse_from_file()")]


def test_code_only_skips_docstrings_and_comments():
    src = '"""TensorRT 11 removed BuilderFlag.FP16."""\n# config.int8_calibrator\nx = trt.BuilderFlag.FP16\n'
    hits = [i for i, line in enumerate(code_only(src).splitlines(), 1) if FORBIDDEN.search(line)]
    assert hits == [3]
    assert FORBIDDEN.search("engine.device_memory_size") and not FORBIDDEN.search("engine.device_memory_size_v2")


# ---------------------------------------------------------------- the pure-Python parts of tensorrt.py


def _flag_namespace(members: dict[str, int]):
    return SimpleNamespace(NetworkDefinitionCreationFlag=enum.IntEnum("NetworkDefinitionCreationFlag", members))


@pytest.mark.parametrize("version", [V10_OLDEST, V10_NEWEST, V11])
def test_strongly_typed_flags_with_the_real_enum_values(version):
    from edgeexport.targets.tensorrt import strongly_typed_flags

    members = MANIFESTS[version]["classes"]["NetworkDefinitionCreationFlag"]["enum"]
    assert strongly_typed_flags(_flag_namespace(members)) == 1 << members["STRONGLY_TYPED"]


def test_strongly_typed_flags_without_the_flag():
    from edgeexport.targets.tensorrt import strongly_typed_flags

    members = {k: v for k, v in MANIFESTS[V11]["classes"]["NetworkDefinitionCreationFlag"]["enum"].items()
               if k != "STRONGLY_TYPED"}
    assert strongly_typed_flags(_flag_namespace(members)) == 0


def test_cuda_result_unpacking():
    from edgeexport.targets.tensorrt import _check

    err = enum.IntEnum("cudaError_t", {"cudaSuccess": 0, "cudaErrorMemoryAllocation": 2})
    assert _check((err.cudaSuccess, 1234)) == 1234
    assert _check((err.cudaSuccess, 1, 2)) == [1, 2]
    assert _check((err.cudaSuccess,)) == []
    with pytest.raises(RuntimeError, match="CUDA error"):
        _check((err.cudaErrorMemoryAllocation, 0))


def test_precision_picks_format_and_source_graph():
    from edgeexport.targets.tensorrt import TensorRTOptions, TensorRTTarget

    kinds = {p: TensorRTTarget.format_for(TensorRTOptions(precision=p)).kind for p in ("fp32", "fp16", "int8")}
    assert kinds == {"fp32": "tensorrt", "fp16": "tensorrt-fp16", "int8": "tensorrt-int8"}
    ctx = SimpleNamespace(source_onnx=None)
    reqs = {p: TensorRTTarget.requires(TensorRTOptions(precision=p), ctx) for p in ("fp32", "fp16", "int8")}
    assert [(r.target, r.options) for r in reqs["int8"]] == [("quantize", {"mode": "int8", "target": "tensorrt"})]
    assert [(r.target, r.options) for r in reqs["fp16"]] == [("quantize", {"mode": "fp16"})]
