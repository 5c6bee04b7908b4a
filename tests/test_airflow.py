"""The Airflow DAG runs, not only parses: Airflow from the package index in a virtual environment of
its own (deploy/airflow/setup-venv.sh), `airflow dags test semspark_nightly` submitting
jobs/nightly.py through SparkSubmitOperator on the embedded default. What the night wrote is read
back with pyarrow from the warehouse's files, against the raw files' hashes."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from semspark.synth.generate import generate

from .conftest import PROJECT_ROOT

VENV_BIN = Path(sys.executable).parent
IMAGE_SUFFIXES = (".tif", ".png", ".jpg")


@pytest.fixture(scope="module")
def airflow_bin() -> Path:
    result = subprocess.run(["bash", str(PROJECT_ROOT / "deploy" / "airflow" / "setup-venv.sh")],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1]) / "bin" / "airflow"


def table(folder: Path):
    import pyarrow.dataset as ds

    return ds.dataset(str(folder), format="parquet", partitioning="hive", exclude_invalid_files=True).to_table()


def test_the_dag_runs_the_nightly_through_spark_submit(airflow_bin, tmp_path):
    raw = tmp_path / "raw"
    generate(raw, 6, seed=600, width=256, height=192)
    images = {hashlib.sha256(p.read_bytes()).hexdigest() for p in raw.rglob("*") if p.suffix in IMAGE_SUFFIXES}
    home = tmp_path / "home"
    conf = tmp_path / "semspark.yaml"
    conf.write_text("ingest:\n  image_size: 48\n  files_per_task: 8\n")
    env = dict(os.environ,
               AIRFLOW_HOME=str(tmp_path / "airflow"),
               AIRFLOW__CORE__DAGS_FOLDER=str(PROJECT_ROOT / "deploy" / "airflow"),
               AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path / 'airflow' / 'airflow.db'}",
               AIRFLOW_CONN_SPARK_SEMSPARK=json.dumps({"conn_type": "spark", "host": "local[2]"}),
               AIRFLOW_VAR_SEMSPARK_ROOT=str(PROJECT_ROOT), AIRFLOW_VAR_SEMSPARK_INPUT=str(raw),
               AIRFLOW_VAR_SEMSPARK_HOME=str(home), AIRFLOW_VAR_SEMSPARK_CONF=str(conf),
               # semspark's spark-submit first: the provider runs the one on the PATH
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    for key in ("SEMSPARK_HOME", "SEMSPARK_CONF", "PYSPARK_PYTHON", "SPARK_HOME"):
        env.pop(key, None)
    migrated = subprocess.run([str(airflow_bin), "db", "migrate"], env=env, capture_output=True, text=True,
                              timeout=600)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    run = subprocess.run([str(airflow_bin), "dags", "test", "semspark_nightly", "2026-11-30"], env=env,
                         capture_output=True, text=True, timeout=900)
    log = run.stdout + run.stderr
    assert run.returncode == 0 and "Marking task as SUCCESS" in log, log[-5000:]
    assert "spark-submit" in log and "jobs/nightly.py" in log

    warehouse = home / "warehouse" / "sem.db"
    assert set(table(warehouse / "images").column("image_id").to_pylist()) == images
    events = table(warehouse / "run_events").to_pylist()
    ended = [e for e in events if e["status"] == "succeeded"]
    assert len(ended) == 1 and ended[0]["new_images"] == len(images) and ended[0]["kind"] == "nightly"
