"""Shared fixtures: one SparkSession for the whole run (local[2], its own SEMSPARK_HOME), and
synthetic data sets generated once per run with their manifest of truth."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REAL_SAMPLES = PROJECT_ROOT.parent / "shared" / "samples" / "real"


def pytest_configure(config):
    config.addinivalue_line("markers", "spark: needs the shared SparkSession")


VIEWFS_CLUSTER = "semtest"


@pytest.fixture(scope="session")
def semspark_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("semspark_home")
    os.environ["SEMSPARK_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def spark(semspark_home):
    from semspark.config import Config
    from semspark.session import build_session

    session = build_session(Config(), app_name="semspark-tests", extra={
        "spark.master": "local[2]",
        "spark.sql.shuffle.partitions": "4",
        "spark.default.parallelism": "2",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # a second file system: Hadoop's view file system, viewfs://semtest/remote/ mounted on a local
        # folder, so that what semspark does for a warehouse that is not local (HDFS, S3) runs for real
        f"spark.hadoop.fs.viewfs.mounttable.{VIEWFS_CLUSTER}.link./remote": (semspark_home / "viewfs").as_uri(),
    })
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture(scope="session")
def real_manifest() -> list[dict]:
    if not REAL_SAMPLES.is_dir():
        pytest.fail(f"the real SEM samples are missing: expected them in {REAL_SAMPLES}")
    with open(REAL_SAMPLES / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory):
    """27 images: every scale in every layout (the generator walks them first), 384 px wide."""
    from semspark.synth.generate import generate

    folder = tmp_path_factory.mktemp("synthetic")
    records = generate(folder, 27, seed=11, width=384, height=288)
    return folder, records


@pytest.fixture(scope="session")
def scoring(spark, tmp_path_factory):
    """A small ingested catalog (database `scoring`) and a small model trained on it, for the infer
    and nightly tests. The model is not meant to be good: scoring must agree with it, whatever it says."""
    from types import SimpleNamespace

    from semspark.config import CatalogConfig, Config, InferConfig, IngestConfig
    from semspark.ingest.job import run_ingest
    from semspark.synth.generate import generate
    from semspark.train.job import TrainRequest, run_training

    config = Config(catalog=CatalogConfig(database="scoring"),
                    ingest=IngestConfig(image_size=96, dataset_dir="datasets/scoring", files_per_task=32),
                    infer=InferConfig(batch_size=16, images_per_task=20))
    first = tmp_path_factory.mktemp("scoring_first")
    records = generate(first, 40, seed=21, width=384, height=288)
    run_ingest(spark, config, str(first), labels="folders")
    model = run_training(spark, config, TrainRequest(arch="compact_cnn", epochs=2, batch_size=8,
                                                     num_proc=1, name="scorer", patience=100))
    return SimpleNamespace(config=config, first=first, records=records, model=model)


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def register_copy(source, name: str) -> str:
    """Register the model in folder ``source`` again as NAME/N (its file and metadata); returns NAME/N.
    Tests score with a copy when they must not change what another test counts for the original."""
    import shutil

    from semspark import registry

    version, folder = registry.new_version(name)
    for file in ("model.keras", "metadata.json", registry.REFERENCE_EMBEDDINGS):
        if (Path(source) / file).exists():
            shutil.copy(Path(source) / file, folder / file)
    return f"{name}/{version}"


def start_sql_server(env: dict, port: int, log_file: Path, timeout: float = 180):
    """`semspark sql-server` on 127.0.0.1:port in its own process group, once its port is open.
    Its log goes to ``log_file``: the Thrift server logs much, and a pipe nobody reads would stop
    it when full."""
    import socket
    import subprocess
    import sys
    import time

    server = subprocess.Popen([str(Path(sys.executable).parent / "semspark"), "sql-server", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(log_file, "w"), start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise AssertionError(f"the server exited: {log_file.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            if time.monotonic() > deadline:
                stop_process_group(server)
                raise AssertionError(f"the Thrift server did not open its port in {timeout:.0f} s")
            time.sleep(1)


def stop_process_group(process, timeout: float = 60) -> None:
    """SIGTERM a process started with start_new_session, SIGKILL if it outlives ``timeout``."""
    import os
    import signal
    import subprocess

    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
