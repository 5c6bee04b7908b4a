"""What a command's exit code tells a scheduler, and the errors that choose it.

- 0: the run did its work.
- 1: the run failed for a cause that may pass (a lost executor, a killed rank, an I/O error, the
  embedded catalog busy): everything finished before the failure is kept, and rerunning the same
  command is safe and the thing to do. An unexpected exception (a bug) also exits 1, with its
  traceback.
- 2: the command cannot run as given (a wrong argument, a missing file, a model or scale bin that
  does not exist, a bad config): rerunning it unchanged fails the same way.
- 3: the run finished but its result fails a quality gate (``quality`` in the config): e.g. more
  than the allowed share of the night's files quarantined, or images to score and none scored.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_RETRY = 1
EXIT_USAGE = 2
EXIT_QUALITY_GATE = 3


class RunFailed(Exception):
    """Mixed into a stage's error when the run itself failed part-way (not the command): exit 1."""


class QualityGateFailed(RuntimeError):
    """The run finished; its result is below the configured quality: exit 3."""

    def __init__(self, reasons: list[str]):
        super().__init__("quality gate: " + "; ".join(reasons))
        self.reasons = reasons


def is_usage_error(exc: BaseException) -> bool:
    """Does ``exc`` say the command cannot run as given (exit 2), rather than that a run failed?"""
    from semspark.analysis.hierarchy import AnalysisMemoryError
    from semspark.analysis.job import AnalysisError
    from semspark.config import ConfigError
    from semspark.infer.job import InferError
    from semspark.ingest.listing import IngestError
    from semspark.ingest.ocr import OcrUnavailable
    from semspark.ingest.quarantine import QuarantineError
    from semspark.ingest.rescale import RescaleError
    from semspark.dataset import DatasetError
    from semspark.labels import LabelError
    from semspark.metastore import MoveError
    from semspark.session import MetastoreError
    from semspark.train.job import TrainError
    from semspark.registry import RegistryError
    from semspark.train.spec import ModelError

    usage = (ConfigError, IngestError, TrainError, ModelError, RegistryError, InferError, AnalysisError,
             AnalysisMemoryError, RescaleError, OcrUnavailable, QuarantineError, LabelError, DatasetError, MetastoreError, MoveError)
    return isinstance(exc, usage) and not isinstance(exc, RunFailed)


def ingest_gate(summary, quality) -> list[str]:
    """Reasons an ingest's result fails the gate: too many of the files it processed quarantined."""
    quarantined = sum(summary.quarantined.values())
    processed = summary.new_images + summary.duplicate_files + quarantined
    if processed and quarantined / processed > quality.max_quarantined_share:
        return [f"{quarantined} of {processed} new files quarantined ({quarantined / processed:.0%}, "
                f"over quality.max_quarantined_share {quality.max_quarantined_share:.0%}): see "
                "semspark sql \"SELECT stage, reason, count(*) FROM sem.quarantine GROUP BY stage, reason\""]
    return []


def infer_gate(summary, quality) -> list[str]:
    """Reasons a scoring's result fails the gate: images to score and none scored."""
    waiting = summary.candidates - summary.already_scored
    if quality.require_scored and waiting > 0 and summary.scored == 0:
        return [f"{waiting} images were waiting to be scored by {summary.model_version} and none was "
                f"({summary.failures} failed, {summary.missing_pixels} without stored pixels)"]
    return []
