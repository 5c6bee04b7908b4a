"""The nightly job: ingest what is new, score what is new with the production model, record the run.

Safe to run twice and to rerun after a kill at any point, because each step is: ingest keeps only
what sem.files / sem.quarantine / sem.images do not hold yet, and infer only what sem.predictions
does not hold for the production model. The run log is append-only (a row when a run starts, a
row when it ends), so a killed run can never damage it: the next run marks a run that never ended
as ``interrupted``. The view sem.runs shows the latest row of each run.

One nightly at a time per catalog: the schedulers in deploy/ forbid overlapping runs, and the
embedded Derby catalog admits one process anyway.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import timezone

from semspark.catalog import append_rows, ensure_tables, ensure_view, local_columns, new_run_id, qualified, utc_now
from semspark.compaction import CompactionSummary, compact, needs_compaction
from semspark.config import Config
from semspark.errors import RunFailed, infer_gate, ingest_gate, is_usage_error
from semspark.infer.job import InferSummary, production_model, run_inference
from semspark.ingest.job import IngestSummary, run_ingest
from semspark.schema import INFER_TABLES, INGEST_TABLES, RUN_EVENTS
from semspark.storage import home_path

log = logging.getLogger(__name__)

RUNS_VIEW = "runs"
STALE_STAGING_S = 24 * 3600


class NightlyError(RuntimeError):
    """A step of the nightly run cannot run as configured (a bad input path, a broken model): exit 2."""


class NightlyRunFailed(NightlyError, RunFailed):
    """A step of the nightly run failed for a cause that may pass: rerun (exit 1)."""


@dataclass
class NightlyResult:
    run_id: str
    status: str                     # succeeded | gated (finished, but below a quality gate)
    record: dict
    lines_: list[str]
    ingest: IngestSummary | None = None
    infer: InferSummary | None = None
    quality_gate: list[str] = field(default_factory=list)
    compaction: CompactionSummary | None = None

    def lines(self) -> list[str]:
        return self.lines_

    def as_dict(self) -> dict:
        """The summary for ``--json``: the run's record, and each step's own summary."""
        return {**{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in self.record.items()},
                "ingest": self.ingest.as_dict() if self.ingest else None,
                "infer": self.infer.as_dict() if self.infer else None, "quality_gate": self.quality_gate,
                "compaction": self.compaction.as_dict() if self.compaction else None}


def ensure_run_log(spark, database: str) -> None:
    ensure_tables(spark, database, (RUN_EVENTS,))
    ensure_view(spark, qualified(database, RUNS_VIEW),
                "One row per nightly run: its latest state (running, succeeded, gated, failed, interrupted)",
                f"""SELECT {', '.join(c for c in RUN_EVENTS.columns if c != 'recorded_at')}
        FROM (SELECT *, row_number() OVER (PARTITION BY run_id ORDER BY recorded_at DESC) AS latest
              FROM {qualified(database, RUN_EVENTS)})
        WHERE latest = 1""")


def _log_event(spark, database: str, record: dict) -> None:
    append_rows(spark, database, RUN_EVENTS, [{**record, "recorded_at": utc_now()}])


def _close_interrupted(spark, database: str) -> list[str]:
    """Runs whose latest row says running were killed: record them as interrupted."""
    records = _still_running(spark, database)
    for record in records:
        record.update(status="interrupted", ended_at=None,
                      message="the run stopped without recording an end (killed?); a later run took over")
        _log_event(spark, database, record)
    return [r["run_id"] for r in records]


def _still_running(spark, database: str) -> list[dict]:
    """The latest row of each run whose latest row says running (the view runs' rule), without
    recorded_at. Read with pyarrow from the run log's files where they are local: it is the first
    query of a night, and as a Spark query it cost 0.8 s of a 14-s night (the log is small, and
    compacted like the other tables); through the view otherwise."""
    # another process may have logged since this session listed the log's files
    log_table = local_columns(spark, database, RUN_EVENTS, RUN_EVENTS.columns, refresh=True)
    if log_table is None:
        return [r.asDict() for r in spark.table(qualified(database, RUNS_VIEW)).filter("status = 'running'").collect()]
    events = log_table.to_pylist()
    latest: dict[str, dict] = {}
    for event in events:
        if event["run_id"] not in latest or event["recorded_at"] > latest[event["run_id"]]["recorded_at"]:
            latest[event["run_id"]] = event
    running = [e for e in latest.values() if e["status"] == "running"]
    for event in running:
        del event["recorded_at"]
        for key, value in event.items():
            if hasattr(value, "tzinfo") and value.tzinfo is not None:
                event[key] = value.astimezone(timezone.utc).replace(tzinfo=None)
    return sorted(running, key=lambda e: e["run_id"])


def _remove_stale_staging() -> None:
    """Staging folders a killed ingest or infer left behind (live ones are minutes old). Runs after
    ensure_tables, which replays (and so removes) any journalled rewrite's staging folder first."""
    root = home_path("staging")
    if not root.is_dir():
        return
    cutoff = time.time() - STALE_STAGING_S
    for folder in root.iterdir():
        if folder.is_dir() and folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)


def run_nightly(spark, config: Config, input_path: str, labels: str | None = None) -> NightlyResult:
    db = config.catalog.database
    ensure_tables(spark, db, INGEST_TABLES + INFER_TABLES)
    ensure_run_log(spark, db)
    interrupted = _close_interrupted(spark, db)
    _remove_stale_staging()
    run_id = new_run_id("nightly-")
    record = {name: None for name in RUN_EVENTS.columns}
    record.update(run_id=run_id, kind="nightly", input=input_path, status="running", started_at=utc_now())
    _log_event(spark, db, record)
    lines = [f"nightly run {run_id}"]
    if interrupted:
        lines.append(f"  earlier runs that never finished, now marked interrupted: {', '.join(interrupted)}")

    def fail(step: str, exc: Exception) -> NightlyError:
        record.update(status="failed", ended_at=utc_now(), message=f"{step} failed: {exc}"[:2000])
        try:
            _log_event(spark, db, record)
        except Exception:  # Spark itself may be what failed; the next run marks this one interrupted
            log.warning("could not record the failure of %s", run_id, exc_info=True)
        kind = NightlyError if is_usage_error(exc) else NightlyRunFailed
        return kind(f"{step} failed: {exc}; the tables hold everything finished before it; "
                    f"fix the cause and rerun (the run is recorded as {run_id} in {db}.{RUNS_VIEW})")

    log.info("nightly %s: ingest %s", run_id, input_path)
    step_started = time.monotonic()
    try:
        ingest = run_ingest(spark, config, input_path, labels=labels)
    except Exception as exc:
        raise fail("ingest", exc) from exc
    record.update(files_listed=ingest.listed, already_known=ingest.already_known, new_images=ingest.new_images,
                  duplicate_files=ingest.duplicate_files, sidecars=ingest.sidecars,
                  quarantined=sum(ingest.quarantined.values()))
    lines += ingest.lines()

    log.info("nightly %s: ingest done in %.1f s: %d new images, %d quarantined", run_id,
             time.monotonic() - step_started, ingest.new_images, sum(ingest.quarantined.values()))
    gate = ingest_gate(ingest, config.quality)
    scored = None
    model = production_model(spark, db)
    if model is None:
        record["message"] = "no production model: nothing scored (semspark promote --model NAME/VERSION)"
        lines.append("no production model, so nothing was scored: run semspark promote --model NAME/VERSION")
    else:
        log.info("nightly %s: scoring with %s", run_id, model)
        try:
            scored = run_inference(spark, config, model)
        except Exception as exc:
            raise fail(f"scoring with {model}", exc) from exc
        log.info("nightly %s: scoring done in %.1f s: %d images scored", run_id, scored.seconds, scored.scored)
        record.update(model_version=scored.model_version, scored=scored.scored, score_failures=scored.failures)
        lines += scored.lines()
        gate += infer_gate(scored, config.quality)
    compaction = None
    if config.compaction.nightly and needs_compaction(spark, config):
        log.info("nightly %s: compacting small files", run_id)
        try:
            compaction = compact(spark, config)
        except Exception as exc:
            raise fail("compaction", exc) from exc
        lines += compaction.lines()
    status = "gated" if gate else "succeeded"
    if gate:
        record["message"] = "; ".join(filter(None, [record.get("message"), "quality gate: " + "; ".join(gate)]))
    record.update(status=status, ended_at=utc_now())
    _log_event(spark, db, record)
    seconds = (record["ended_at"] - record["started_at"]).total_seconds()
    lines.append(f"nightly run {run_id} {status} in {seconds:.0f} s" + ("".join(f"\n  quality gate: {g}" for g in gate)))
    return NightlyResult(run_id=run_id, status=status, record=record, lines_=lines, ingest=ingest, infer=scored,
                         quality_gate=gate, compaction=compaction)
