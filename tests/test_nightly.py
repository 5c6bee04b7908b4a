"""The nightly job: twice in a row leaves the same tables; killed mid-run (SIGKILL, a real separate
process) and rerun leaves correct tables; failures are recorded and reported. Then the operators'
SQL paths on that catalog: Spark's Thrift server queried through beeline, and spark-sql."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from semspark.catalog import insert
from semspark.config import QualityConfig
from semspark.errors import RunFailed
from semspark.infer.job import promote
from semspark.ingest.job import run_ingest
from semspark.nightly import NightlyError, ensure_run_log, run_nightly
from semspark.schema import RUN_EVENTS
from semspark.synth.generate import generate

from .conftest import free_port, register_copy, start_sql_server, stop_process_group
from .test_infer import distinct_images

pytestmark = pytest.mark.spark

VENV_BIN = Path(sys.executable).parent
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def snapshot(spark, db: str) -> dict[str, list[tuple]]:
    """What the nightly job writes, as sorted plain tuples (ingest times and run ids left out)."""
    queries = {
        "images": "SELECT image_id, path, scale_bin, label, nm_per_px FROM {db}.images",
        "files": "SELECT path, image_id, role, size FROM {db}.files",
        "quarantine": "SELECT path, stage, reason FROM {db}.quarantine",
        "predictions": "SELECT image_id, model_version, category, confidence FROM {db}.predictions",
    }
    return {name: sorted(tuple(str(v) for v in row) for row in spark.sql(q.format(db=db)).collect())
            for name, q in queries.items()}


def add_broken_file(folder: Path) -> None:
    jpeg = next(folder.rglob("*.jpg"))
    data = jpeg.read_bytes()
    (folder / "Particles" / "cut_short.jpg").write_bytes(data[: len(data) // 3])


@pytest.fixture(scope="module")
def own(spark, scoring):
    """The nightly's own database, ingested from the images of the infer tests' catalog, and its own
    copy of their model: promoting and scoring here leaves what test_infer counts in `scoring` as it
    was, whichever order the tests run in."""
    db = "nightly_scoring"
    config = dataclasses.replace(
        scoring.config, catalog=dataclasses.replace(scoring.config.catalog, database=db),
        ingest=dataclasses.replace(scoring.config.ingest, dataset_dir=f"datasets/{db}"))
    run_ingest(spark, config, str(scoring.first), labels="folders")
    return SimpleNamespace(db=db, config=config, model_version=register_copy(scoring.model.path, "nightly_scorer"))


def test_nightly_twice_leaves_the_same_tables(spark, own, tmp_path):
    db = own.db
    promote(spark, own.config, own.model_version)
    night = tmp_path / "night"
    generate(night, 8, seed=23, width=384, height=288)
    generated = distinct_images(night)
    add_broken_file(night)
    # A run that was killed earlier: its start is logged, its end never was.
    ensure_run_log(spark, db)
    ghost = {name: None for name in RUN_EVENTS.columns}
    ghost.update(run_id="nightly-ghost", kind="nightly", status="running", started_at=datetime(2026, 1, 1, 2, 3, 4),
                 files_listed=7, input="/data/sem", recorded_at=datetime(2026, 1, 1, 2, 3, 4))
    # a run that logged its start, then its end: not interrupted, whatever order its rows are in
    finished = [{**ghost, "run_id": "nightly-finished", "status": status, "recorded_at": datetime(2026, 1, 2, hour)}
                for status, hour in (("succeeded", 5), ("running", 4))]
    insert(spark.createDataFrame([ghost, *finished], RUN_EVENTS.schema), db, RUN_EVENTS)

    known = {r[0] for r in spark.sql(f"SELECT image_id FROM {db}.images").collect()}
    scored_before = {r[0] for r in spark.sql(f"SELECT image_id FROM {db}.predictions "
                                             f"WHERE model_version = '{own.model_version}'").collect()}
    new = generated - known
    # a strict gate: 2 quarantined files of the night's ~10 are over 10%
    strict = dataclasses.replace(own.config, quality=QualityConfig(max_quarantined_share=0.1))
    first = run_nightly(spark, strict, str(night), labels="folders")
    # quarantined: the cut-short JPEG, and the generator's manifest.csv (not an image)
    assert first.record["new_images"] == len(new) and first.record["quarantined"] == 2
    processed = len(new) + first.record["duplicate_files"] + 2
    assert first.status == "gated" and len(first.quality_gate) == 1
    assert first.quality_gate[0].startswith(f"2 of {processed} new files quarantined")
    # scored: what the production model had not scored yet, the new images included
    assert first.record["scored"] == len((known | new) - scored_before)
    assert any("nightly-ghost" in line for line in first.lines())
    assert not any("nightly-finished" in line for line in first.lines())
    after_first = snapshot(spark, db)

    second = run_nightly(spark, own.config, str(night), labels="folders")
    assert (second.record["new_images"], second.record["scored"], second.record["quarantined"]) == (0, 0, 0)
    assert snapshot(spark, db) == after_first
    ids = [r[0] for r in after_first["predictions"] if r[1] == own.model_version]
    assert len(ids) == len(set(ids)) == len(after_first["images"])

    runs = {r["run_id"]: r for r in spark.sql(f"SELECT * FROM {db}.runs").collect()}
    assert runs["nightly-ghost"]["status"] == "interrupted" and runs["nightly-finished"]["status"] == "succeeded"
    # the interrupted record keeps what the run logged at its start
    assert (runs["nightly-ghost"]["started_at"], runs["nightly-ghost"]["files_listed"],
            runs["nightly-ghost"]["input"]) == (datetime(2026, 1, 1, 2, 3, 4), 7, "/data/sem")
    assert (runs[first.run_id]["status"], runs[second.run_id]["status"]) == ("gated", "succeeded")
    assert "quality gate: 2 of" in runs[first.run_id]["message"]
    assert runs[first.run_id]["new_images"] == len(new) and runs[first.run_id]["ended_at"] is not None


def test_a_failed_nightly_says_what_failed_and_is_recorded(spark, own, tmp_path):
    with pytest.raises(NightlyError, match="ingest failed") as caught:
        run_nightly(spark, own.config, str(tmp_path / "no-such-folder"))
    assert "rerun" in str(caught.value)
    assert not isinstance(caught.value, RunFailed)     # a folder that does not exist: exit 2, not a retry
    failed = spark.sql(f"SELECT status, message FROM {own.db}.runs WHERE status = 'failed'").collect()
    assert len(failed) == 1 and "ingest failed" in failed[0]["message"]


# ---- separate processes on their own catalog: kill, rerun, then SQL from outside ---------------------

@pytest.fixture(scope="module")
def ops(scoring, tmp_path_factory):
    """A second SEMSPARK_HOME, used only by subprocesses (Derby admits one JVM per catalog)."""
    root = tmp_path_factory.mktemp("ops")
    home = root / "home"
    shutil.copytree(Path(scoring.model.path), home / "models" / "scorer" / "1")
    raw = root / "raw"
    generate(raw, 24, seed=31, width=384, height=288)
    images = distinct_images(raw)
    image_files = len([p for p in raw.rglob("*") if p.suffix in (".tif", ".png", ".jpg")])
    add_broken_file(raw)
    conf = root / "semspark.yaml"
    conf.write_text("ingest:\n  image_size: 96\n  files_per_task: 8\n"
                    "infer:\n  batch_size: 8\n  images_per_task: 4\n")
    env = dict(os.environ, SEMSPARK_HOME=str(home), SEMSPARK_CONF=str(conf), SEMSPARK_MASTER="local[2]",
               PYSPARK_PYTHON=sys.executable, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return {"home": home, "raw": raw, "env": env, "images": images, "image_files": image_files}


def semspark(ops, *args, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(VENV_BIN / "semspark"), *args], env=ops["env"], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def sql_json(ops, query: str) -> list[dict]:
    out = semspark(ops, "sql", "--format", "json", query).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def nightly_killed_and_rerun(ops):
    semspark(ops, "promote", "--model", "scorer/1")
    # killed while a scoring task has run the model on a batch (semspark.storage.pause_point); the
    # killed run and the rerun on machines whose clocks are set to other time zones than UTC
    started = datetime.now(timezone.utc).replace(tzinfo=None)
    paused = ops["home"] / "paused-scoring-batch"
    process = subprocess.Popen([str(VENV_BIN / "semspark"), "nightly", "--input", str(ops["raw"]),
                                "--labels", "folders"],
                               env=dict(ops["env"], SEMSPARK_PAUSE_AT="scoring-batch", TZ="America/New_York"),
                               stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not paused.exists():
            assert process.poll() is None, "nightly ended before it reached scoring"
            assert time.monotonic() < deadline, "nightly never reached scoring"
            time.sleep(0.5)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    # The rerun goes the operators' way: deploy/nightly.sh (what cron calls), i.e. spark-submit of
    # jobs/nightly.py, under its lock.
    rerun = subprocess.run(["bash", str(PROJECT_ROOT / "deploy" / "nightly.sh"), str(ops["raw"]), "folders"],
                           env=dict(ops["env"], SPARK_MASTER="local[2]", TZ="Asia/Kolkata"), capture_output=True,
                           text=True, timeout=300)
    ended = datetime.now(timezone.utc).replace(tzinfo=None)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (ops["home"] / "nightly.lock").exists()
    # a log, not a terminal: semspark's own progress lines, none of Spark's redrawn bars (Spark's
    # PythonRunner passes the Python driver's stderr on with its stdout: a log takes both)
    log = rerun.stdout + rerun.stderr
    assert "[Stage " not in log and "\r" not in log and "images scored" in log
    return KilledAndRerun(rerun.stdout, started, ended)


@dataclasses.dataclass
class KilledAndRerun:
    stdout: str            # the rerun's
    started: datetime      # UTC, naive: before the killed run started
    ended: datetime        # after the rerun ended


def test_nightly_killed_mid_run_then_rerun_leaves_correct_tables(ops, nightly_killed_and_rerun):
    assert "marked interrupted" in nightly_killed_and_rerun.stdout
    images, image_files = ops["images"], ops["image_files"]
    [counts] = sql_json(ops, """SELECT
        (SELECT count(*) FROM sem.images) AS images,
        (SELECT count(DISTINCT image_id) FROM sem.images) AS distinct_images,
        (SELECT count(*) FROM sem.files WHERE role = 'image') AS image_files,
        (SELECT count(DISTINCT path) FROM sem.files) AS distinct_files,
        (SELECT count(*) FROM sem.files) AS files,
        (SELECT concat_ws(',', sort_array(collect_list(regexp_extract(path, '[^/]+$', 0))))
           FROM sem.quarantine) AS quarantined,
        (SELECT count(*) FROM sem.predictions) AS predictions,
        (SELECT count(DISTINCT image_id) FROM sem.predictions) AS distinct_predictions,
        (SELECT count(*) FROM sem.latest_predictions WHERE category IS NULL) AS unscored,
        (SELECT concat_ws(',', sort_array(collect_list(status))) FROM sem.runs) AS statuses""")
    assert counts["images"] == counts["distinct_images"] == len(images)
    assert counts["image_files"] == image_files and counts["files"] == counts["distinct_files"]
    assert counts["quarantined"] == "cut_short.jpg,manifest.csv"
    assert counts["predictions"] == counts["distinct_predictions"] == len(images)
    assert counts["unscored"] == 0
    assert counts["statuses"] == "interrupted,succeeded"
    # the times recorded are UTC whatever the machine's time zone: within the test's clock readings
    window = (nightly_killed_and_rerun.started - timedelta(seconds=1), nightly_killed_and_rerun.ended + timedelta(seconds=1))
    for run in sql_json(ops, "SELECT status, cast(started_at AS string) AS started, cast(ended_at AS string) AS ended, "
                             "cast(recorded_at AS string) AS recorded FROM sem.run_events"):
        for key in ("started", "ended", "recorded"):
            if run[key] is not None:
                assert window[0] <= datetime.fromisoformat(run[key]) <= window[1], (run, window)


def test_thrift_server_answers_beeline_on_loopback(ops, nightly_killed_and_rerun):
    port = free_port()
    server = start_sql_server(ops["env"], port, ops["home"].parent / "sql-server.log")
    try:
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert "127.0.0.1" in listening and "0.0.0.0" not in listening and "*:" not in listening.split()[3]
        query = ("SELECT count(*) AS scored, count(DISTINCT model_version) AS models "
                 "FROM sem.latest_predictions WHERE category IS NOT NULL")
        result = subprocess.run([str(VENV_BIN / "beeline"), "-u", f"jdbc:hive2://127.0.0.1:{port}/sem",
                                 "--outputformat=csv2", "--silent=true", "-e", query],
                                env=ops["env"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        assert lines[-2].endswith("scored,models") and lines[-1] == f"{len(ops['images'])},1", result.stdout
    finally:
        stop_process_group(server)


def test_spark_sql_finds_the_same_catalog(ops, nightly_killed_and_rerun):
    flags = semspark(ops, "spark-conf").stdout.split()
    result = subprocess.run([str(VENV_BIN / "spark-sql"), *flags, "--master", "local[1]", "-S", "-e",
                             "SELECT count(*) FROM sem.predictions"], env=ops["env"], capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == str(len(ops["images"]))
