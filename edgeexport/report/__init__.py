"""Reports: one typed :class:`Report` per run, bundle verification or matrix, made by one builder
(:class:`ReportBuilder`) and read by both renderers: Markdown and the terminal table
(:mod:`~edgeexport.report.text`) and a self-contained HTML page (:mod:`~edgeexport.report.html`).

Every artifact appears with its backend, precision, size, parity verdict and latency side by side.
A check that could not execute on this machine is reported as "not run on this machine", never as
passed. :func:`load_report` reads a report back from its JSON.
"""
from edgeexport.report.build import ReportBuilder, artifact_result  # noqa: F401
from edgeexport.report.schema import (  # noqa: F401
    SCHEMA_VERSION,
    STATUS_TEXT,
    ArtifactResult,
    Cell,
    Eager,
    Inputs,
    Machine,
    MatrixInfo,
    ModelInfo,
    Report,
    Signature,
    TaskResult,
    check_report_paths,
    load_report,
    report_from_dict,
)

__all__ = ["SCHEMA_VERSION", "STATUS_TEXT", "ArtifactResult", "Cell", "Eager", "Inputs", "Machine", "MatrixInfo",
           "ModelInfo", "Report", "ReportBuilder", "Signature", "TaskResult", "artifact_result", "load_report",
           "report_from_dict"]
