"""What this machine can do (``edgeexport doctor`` and ``edgeexport targets``), from the target registry.

``doctor`` lists the core packages and, for every registered target, whether it can convert
and run here, with versions and the install hint when something is missing. Nothing here names
a backend: targets declare their modules, availability probes and install hints.
"""
from __future__ import annotations

import os
import platform

from edgeexport.targets import list_targets
from edgeexport.util import default_threads, version_of

CORE = {"torch": "torch", "onnx": "onnx", "onnxruntime": "onnxruntime", "onnxsim": "onnxsim",
        "onnxscript": "onnxscript", "onnxconverter_common": "onnxconverter-common", "safetensors": "safetensors"}


def machine_info(threads: int | None = None) -> dict:
    """The machine a report was measured on; ``threads``: the thread count every backend ran with."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and cpu in ("", platform.processor(), platform.machine()):
                    cpu = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"cpu": cpu, "cores": default_threads(), "logical_cpus": os.cpu_count(), "threads": threads,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "machine": platform.machine(), "isa": [name for flag, name in ISA if flag in flags]}


# CPU flags (x86 /proc/cpuinfo "flags", ARM "Features") that decide which int8 / fp16 kernels a runtime picks
ISA = (("avx2", "AVX2"), ("fma", "FMA"), ("avx512f", "AVX512F"), ("avx512_vnni", "AVX512-VNNI"),
       ("avx_vnni", "AVX-VNNI"), ("avx512_bf16", "AVX512-BF16"), ("avx512_fp16", "AVX512-FP16"), ("amx_tile", "AMX"),
       ("amx_int8", "AMX-INT8"), ("asimd", "NEON"), ("asimddp", "NEON-dotprod"), ("i8mm", "I8MM"), ("fphp", "FP16"),
       ("sve", "SVE"), ("sve2", "SVE2"), ("sme", "SME"))


def installed_versions() -> dict[str, str | None]:
    """Versions of the core packages and of every target's modules (None: not installed)."""
    out = {name: version_of(dist) for name, dist in CORE.items()}
    for t in list_targets():
        for module, version in t.versions().items():
            out.setdefault(module.split(".")[0], version)
    return out


def target_rows() -> list[dict]:
    rows = []
    for t in list_targets():
        build, run = t.build_availability(), t.run_availability()
        rows.append({"name": t.name, "title": t.title, "backend": t.backend, "help": t.help,
                     "build": {"ok": build.ok, "reason": build.reason}, "run": {"ok": run.ok, "reason": run.reason},
                     "versions": t.versions(), "install": t.install, "extra": t.extra,
                     "formats": [f.model_dump() for f in t.formats],
                     "options": list(t.Options.model_fields)})
    return rows


def ray_resources(backends: set[str] | None = None) -> dict[str, float]:
    """The custom Ray resources this machine offers: ``{backend: 1}`` for every runtime that can run
    artifacts here (``ray start --resources="$(edgeexport doctor --ray-resources)"``). ``edgeexport
    matrix`` verifies an artifact whose runtime its building node lacks on a node offering it
    (``{"coreml": 1}`` on a Mac; TensorRT asks for ``{"GPU": 1, "tensorrt": 1}``, GPUs are counted by Ray
    itself). 1 means one verification at a time on this node; raise it to allow more. ``backends``: probe
    only these runtimes (each probe imports the runtime)."""
    out: dict[str, float] = {}
    for t in list_targets():
        if t.backend not in out and (backends is None or t.backend in backends) and t.run_availability().ok:
            out[t.backend] = 1
    return dict(sorted(out.items()))


def doctor() -> list[dict]:
    rows = []
    for name, dist in CORE.items():
        v = version_of(dist)
        rows.append({"backend": name, "status": "available" if v else "missing", "version": v,
                     "reason": "" if v else f"{dist} is not installed", "install": "" if v else f"pip install {dist}"})
    for r in target_rows():
        if r["build"]["ok"] and r["run"]["ok"]:
            status, reason = "available", ""
        elif r["build"]["ok"]:
            status, reason = "converts, cannot run here", r["run"]["reason"]
        elif r["run"]["ok"]:
            status, reason = "runs, cannot convert here", r["build"]["reason"]
        else:
            status, reason = "missing", r["build"]["reason"]
        version = next((v for v in r["versions"].values() if v), None)
        rows.append({"backend": f"{r['name']} ({r['title']})", "status": status, "version": version,
                     "reason": reason, "install": "" if status == "available" else r["install"]})
    return rows
