"""The pipeline: prepare, build, check, time, report. It names no backend.

``run(recipe)`` loads the model and its evaluation data (:func:`prepare`), asks every target the
recipe's stages name to build its artifacts, building first what a target requires from other
targets (:func:`plan`, :func:`build`), then checks every artifact the same way through its
runner (:func:`check_artifact`: task metrics on labeled data, parity against eager PyTorch on
real photographs at the main shape and, for dynamic exports, at other shapes), times them all
beside eager with the same thread count (:func:`time_all`) and writes the report.
"""
from edgeexport.pipeline.context import Context, References, RunArtifact, check_parity  # noqa: F401
from edgeexport.pipeline.execute import build, check_artifact, plan, task_issue, time_all  # noqa: F401
from edgeexport.pipeline.prepare import auto_extra_shapes, prepare, stage_options  # noqa: F401
from edgeexport.pipeline.run import (  # noqa: F401
    artifact_from_file, bundle_file, check_file, diff_file, report_of, run, stage_bundle, unbuilt, write_bundle_for)

__all__ = ["Context", "References", "RunArtifact", "artifact_from_file", "auto_extra_shapes", "build", "bundle_file",
           "check_artifact", "check_file", "check_parity", "diff_file", "plan", "prepare", "report_of", "run", "stage_bundle",
           "stage_options", "task_issue", "time_all", "unbuilt", "write_bundle_for"]
