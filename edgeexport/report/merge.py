"""The device's figures come home: ``edgeexport report --merge HOST_REPORT DEVICE_REPORT...`` puts, per artifact,
the parity and latency the host measured beside what each device measured on the same artifact (``edgeexport
verify BUNDLE`` there), each row naming the machine: its CPU, ISA flags, the thread count and the runtime's version.

Only reports of the same model merge; an artifact a device did not verify has no row for that device.
"""
from __future__ import annotations

from pathlib import Path

from edgeexport.errors import UserError
from edgeexport.report.schema import ArtifactResult, Report
from edgeexport.util import md_table

COLUMNS = ["artifact", "measured on", "runtime", "threads", "parity", "worst SNR dB", "max |err| / range",
           "median ms", "p90 ms"]


def runtime_version(report: Report, a: ArtifactResult) -> str:
    """The version of the module the artifact's runner imports, as the report's machine had it installed."""
    from edgeexport.targets import get_target

    try:
        modules = get_target(a.target).run_modules
    except Exception:  # noqa: BLE001 (a target this installation does not have)
        modules = ()
    for module in modules:
        v = report.versions.get(module.split(".")[0])
        if v:
            return f"{module.split('.')[0]} {v}"
    return a.backend


def _worst(a: ArtifactResult, key: str):
    return a.worst(key) if a.parity else None


def merge_rows(host: Report, devices: list[Report]) -> list[list[str]]:
    """One row per (artifact, machine): the host first, then each device that verified the artifact."""
    for d in devices:
        if host.model is None or d.model is None or d.model.name != host.model.name:
            raise UserError(f"--merge: {d.model.name if d.model else 'a report without a model'} is not "
                            f"{host.model.name if host.model else 'the host report'}'s model; only reports of the "
                            "same model merge")
    rows = []
    for name, a in host.artifacts.items():
        for rep, who in [(host, "host"), *((d, f"device {i + 1}") for i, d in enumerate(devices))]:
            b = rep.artifacts.get(name) if rep is not host else a
            if b is None:
                continue
            snr, err = _worst(b, "snr_db"), _worst(b, "max_abs_scaled")
            lat = b.latency
            rows.append([name, f"{who}: {rep.machine.label()}", runtime_version(rep, b),
                         str((lat.threads if lat is not None else None) or rep.machine.threads or "–"),
                         b.status, "–" if snr is None else f"{snr:.2f}", "–" if err is None else f"{err:.2e}",
                         "–" if lat is None else f"{lat.median_ms:.3f}",
                         "–" if lat is None else f"{lat.p90_ms:.3f}"])
    if not any(r[1].startswith("device") for r in rows):
        raise UserError("--merge: no device report holds any artifact of the host report")
    return rows


def merged_markdown(host: Report, devices: list[Report], paths: list[Path]) -> str:
    lines = [f"# {host.model.name}: host and devices", "",
             "Each artifact as the host measured it and as each device measured it (`edgeexport verify`), "
             "from: " + ", ".join(f"`{p.name}`" for p in paths) + ".", "",
             *md_table([dict(zip(COLUMNS, r)) for r in merge_rows(host, devices)], COLUMNS)]
    return "\n".join(lines) + "\n"


def merged_table(host: Report, devices: list[Report]):
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"{host.model.name}: host and {len(devices)} device report(s)"))
    for c in COLUMNS:
        t.add_column(c, justify="left" if c in ("artifact", "measured on", "runtime", "parity") else "right")
    for r in merge_rows(host, devices):
        t.add_row(*(escape(x) for x in r))
    return t
