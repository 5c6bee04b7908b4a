"""The pipeline on a real Spark standalone cluster: deploy/cluster.sh starts a master and two workers
(each its own JVM with one core) on loopback with spark.authenticate; every stage is a spark-submit of
jobs/*.py whose executors run the packaged environment (deploy/package.sh), never the checkout.

One pass through the pipeline, with the faults on the way:
  ingest   #1 shipped environment (--archives); the driver is SIGKILLed while tasks run;
           #2 rerun; one worker (and its executor) is SIGKILLed while tasks run; the job finishes;
  train    two Horovod ranks, one per executor, train the first model, then the refit on training +
           validation (the default); rank 1 is SIGKILLed after the refit's first checkpoint; the run
           fails saying how to resume; the rerun with --run-id trains no epoch of the finished first
           model again and resumes the refit from its checkpoint;
  promote, the nightly through deploy/nightly.sh on new images (it scores every image the
           production model has not: the first ingest's and the night's), analyze.
The same stages run in local mode (the test session's Spark) on the same files, with the model the
cluster trained; the tables must agree.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from semspark.registry import file_sha256
from semspark.synth.generate import generate

from .conftest import free_port, register_copy
from .test_infer import distinct_images

pytestmark = pytest.mark.spark

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CLUSTER_SH = PROJECT_ROOT / "deploy" / "cluster.sh"
SETTINGS = """\
ingest:
  image_size: 64
  files_per_task: 4
  dataset_dir: datasets/cluster
infer:
  batch_size: 8
  images_per_task: 12
analysis:
  scale_bins: []
  features: logits
  coding_dim: "3"
  heatmap_images: 20
  cluster_ks: [3, 10]
  autoencoder_epochs: 20
  id_repetitions: 2
  density_neighbours: 5
  gallery_k: 3
  gallery_clusters: 3
  gallery_images: 4
"""
# The demo's compact network: the cluster test is about distribution and faults, and AlexNet's 54
# million weights made every checkpoint, broadcast and allreduce of it several times slower (every
# architecture trains a step in tests/test_models.py). Six short epochs leave rank 1 time to be
# killed after the refit's first checkpoint and before its last (the refit is the default: trained
# again on training + validation, 0.2 of the images held out for validation). One kill, in the
# refit, covers both models' resume: the rerun must skip the finished first model and resume the
# refit (the same rank-level resume trains either; a kill in the first model too cost a third
# training submit, 52 s on 2026-12-06, for no other code).
EPOCHS = 6
TRAIN = ["--arch", "compact_cnn", "--input-size", "64", "--epochs", str(EPOCHS), "--batch-size", "8", "--num-proc", "2",
         "--name", "clu", "--optimizer", "adam", "--learning-rate", "1e-4", "--run-id", "rk"]


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.dir = self.home / "cluster"
        self.conf = root / "semspark.yaml"
        self.conf.write_text(SETTINGS)
        self.port = free_port()
        self.webui = free_port()
        self.env = dict(os.environ, SEMSPARK_HOME=str(self.home), SEMSPARK_CONF=str(self.conf),
                        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        self.env.pop("SEMSPARK_MASTER", None)

    def script(self, *args, timeout=300) -> subprocess.CompletedProcess:
        result = subprocess.run(["bash", str(CLUSTER_SH), *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    def start(self):
        return self.script("start", "--port", str(self.port), "--webui-port", str(self.webui))

    def submit(self, job: str, *args, ship="provisioned") -> subprocess.Popen:
        return subprocess.Popen(["bash", str(CLUSTER_SH), "submit", str(PROJECT_ROOT / "jobs" / job), *args],
                                env=dict(self.env, SEMSPARK_SHIP=ship), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def run(self, job: str, *args, ship="provisioned", timeout=400) -> str:
        process = self.submit(job, *args, ship=ship)
        out, _ = process.communicate(timeout=timeout)
        assert process.returncode == 0, out[-4000:]
        return out

    def pid(self, daemon: str) -> int:
        return int((self.dir / "pids" / f"spark-semspark-org.apache.spark.deploy.{daemon}.pid").read_text())

    def python_workers(self) -> list[dict]:
        """Python processes started by the executors of this cluster (exe, cwd, environment)."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cwd = os.readlink(proc / "cwd")
                exe = os.readlink(proc / "exe")
                environ = dict(item.split("=", 1) for item in
                               (proc / "environ").read_bytes().decode(errors="replace").split("\0") if "=" in item)
            except OSError:
                continue
            if cwd.startswith(str(self.dir / "work")) and "python" in Path(exe).name:
                found.append({"pid": int(proc.name), "cwd": cwd, "exe": exe, "env": environ})
        return found

    def executor_command_lines(self) -> list[list[str]]:
        """The command lines of this cluster's executor JVMs."""
        found = []
        for proc in Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
                cwd = os.readlink(proc / "cwd")
            except OSError:
                continue
            if cwd.startswith(str(self.dir / "work")) and any(a.endswith("CoarseGrainedExecutorBackend") for a in argv):
                found.append(argv)
        return found


def read_until(process: subprocess.Popen, marker: str, timeout: float, seen: list[str]) -> None:
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            return
        assert time.monotonic() < deadline, f"never saw {marker!r}:\n" + "".join(seen[-30:])
    raise AssertionError(f"the job ended before {marker!r}:\n" + "".join(seen[-30:]))


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything under it, as losing the machine would."""
    children = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    doomed, queue = [], [pid]
    while queue:
        current = queue.pop()
        doomed.append(current)
        queue += children.get(current, [])
    for victim in doomed:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.script("stop")  # again if the last test did: stop is idempotent
        # Several unpacked copies of the 2 GB environment: not left for pytest's three kept runs.
        for heavy in ("work", "env", "local"):
            shutil.rmtree(cluster.dir / heavy, ignore_errors=True)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster_raw")
    generate(folder, 28, seed=41, width=384, height=288)
    night = tmp_path_factory.mktemp("cluster_night")
    generate(night, 8, seed=43, width=384, height=288)
    return {"raw": folder, "night": night}


@pytest.fixture(scope="module")
def pipeline(cluster, raw):
    """Every stage on the cluster, with the faults; what was observed on the way."""
    seen: dict = {"seconds": {}}
    clock = [time.monotonic()]

    def lap(name: str) -> None:
        now = time.monotonic()
        seen["seconds"][name] = round(now - clock[0], 1)
        clock[0] = now
    # Anyone without the secret is refused by the master (it retries for a minute: runs meanwhile).
    stranger = subprocess.Popen(
        [sys.executable, "-c",
         "from pyspark.sql import SparkSession\n"
         f"SparkSession.builder.master('spark://127.0.0.1:{cluster.port}').config('spark.driver.host', "
         "'127.0.0.1').config('spark.ui.enabled', 'false').getOrCreate().range(2).count()"],
        env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    # ingest 1: the shipped environment; the driver dies while the executors' tasks run
    log: list[str] = []
    first = cluster.submit("ingest.py", "--input", str(raw["raw"]), "--labels", "folders", ship="archive")
    try:
        read_until(first, "files in", 300, log)
        workers = wait_for(cluster.python_workers, 240, "executor Python workers (archive unpacked)")
        time.sleep(1.5)
        seen["shipped_workers"] = cluster.python_workers() or workers
        seen["shipped_executors"] = cluster.executor_command_lines()
        assert first.poll() is None, "ingest finished before the driver could be killed:\n" + "".join(log[-20:])
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    seen["files_after_driver_kill"] = len(cluster_rows(cluster, "files"))
    # the killed application's executors go away with it
    wait_for(lambda: not cluster.python_workers(), 60, "the killed driver's executors to stop")
    lap("ingest_killed_driver")

    # ingest 2: rerun; a worker (with its executor) dies while tasks run on both
    log = []
    second = cluster.submit("ingest.py", "--input", str(raw["raw"]), "--labels", "folders")
    read_until(second, "files in", 300, log)
    wait_for(lambda: len({Path(w["cwd"]).parts[-3] for w in cluster.python_workers()}) == 2, 120,
             "Python workers on both workers")
    assert second.poll() is None, "ingest finished before a worker could be killed"
    kill_tree(cluster.pid("worker.Worker-1"))
    out, _ = second.communicate(timeout=400)
    seen["ingest_log"] = "".join(log) + out
    assert second.returncode == 0, seen["ingest_log"][-4000:]
    cluster.start()  # the lost worker comes back (start starts what is not running)
    lap("ingest_killed_worker")
    seen["ingested"] = {t: cluster_rows(cluster, t) for t in ("files", "images", "quarantine")}

    # train: the first model, then rank 1 dies after the refit's first checkpoint
    state = cluster.home / "runs" / "rk" / "state.json"
    refit_state = cluster.home / "runs" / "rk" / "refit" / "state.json"
    train = cluster.submit("train.py", *TRAIN)
    try:
        wait_for(lambda: refit_state.exists() and json.loads(refit_state.read_text())["completed_epochs"] >= 1,
                 800, f"the refit's first checkpoint in {refit_state}")
        ranks = [w for w in cluster.python_workers() if "HOROVOD_RANK" in w["env"]]
        seen["ranks"] = ranks
        victim = next(w for w in ranks if w["env"]["HOROVOD_RANK"] == "1")
        os.kill(victim["pid"], signal.SIGKILL)
        out, _ = train.communicate(timeout=300)
    finally:
        if train.poll() is None:
            os.killpg(train.pid, signal.SIGKILL)
    seen["killed_train"] = train.returncode, out
    # rank 0 cannot go on alone: both states are final
    seen["state_at_kill"] = json.loads(state.read_text())
    seen["refit_state_at_kill"] = json.loads(refit_state.read_text())
    lap("train_refit_killed")
    seen["resumed_train"] = cluster.run("train.py", *TRAIN)
    lap("refit_resumed")

    # The nightly scores every image the production model has not scored (the first ingest's and
    # the night's) with run_inference, the code of jobs/infer.py: no separate infer submit.
    result = subprocess.run([str(VENV_BIN / "semspark"), "promote", "--model", "clu/1"], env=cluster.env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    nightly = subprocess.run(
        ["bash", str(PROJECT_ROOT / "deploy" / "nightly.sh"), str(raw["night"]), "folders"],
        env=dict(cluster.env, SPARK_MASTER=f"spark://127.0.0.1:{cluster.port}", SEMSPARK_CATALOG="embedded",
                 SPARK_SUBMIT_OPTS_EXTRA=f"--properties-file {cluster.dir / 'submit-provisioned.conf'}"),
        capture_output=True, text=True, timeout=400)
    assert nightly.returncode == 0, nightly.stderr[-4000:]
    seen["nightly"] = nightly.stdout
    lap("promote_and_nightly")
    seen["analyze"] = cluster.run("analyze.py", "--model", "clu/1", "--scale-bins", "all")
    lap("analyze")

    try:
        seen["stranger"] = stranger.communicate(timeout=120)[0]
    finally:
        if stranger.poll() is None:
            os.killpg(stranger.pid, signal.SIGKILL)
    seen["stranger_rc"] = stranger.returncode
    print("cluster pipeline seconds:", json.dumps(seen["seconds"]))
    return seen


def cluster_rows(cluster: Cluster, table: str) -> list[dict]:
    """A table the cluster wrote, read from its warehouse files (its Derby catalog is another JVM's)."""
    import pyarrow.parquet as pq

    folder = cluster.home / "warehouse" / "sem.db" / table
    if not folder.exists() or not any(folder.rglob("*.parquet")):
        return []
    return pq.read_table(folder, partitioning="hive").to_pylist()


@pytest.fixture(scope="module")
def reference(spark, raw, cluster, pipeline):
    """The same stages in local mode, in the test session's Spark (database clusterref), with the
    model the cluster trained."""
    import dataclasses

    from semspark.analysis.job import AnalysisRequest, run_analysis
    from semspark.config import CatalogConfig, load_config
    from semspark.infer.job import promote
    from semspark.ingest.job import run_ingest
    from semspark.nightly import run_nightly

    config = load_config(cluster.conf)
    config = dataclasses.replace(config, catalog=CatalogConfig(database="clusterref"),
                                 ingest=dataclasses.replace(config.ingest, dataset_dir="datasets/clusterref"))
    from semspark.train.data import labelled_images, make_split

    run_ingest(spark, config, str(raw["raw"]), labels="folders")
    ingested = {t: rows(spark, f"SELECT * FROM clusterref.{t}") for t in ("files", "images", "quarantine")}
    # what train split, before the nightly: 0.2 validation, the default of a refitted run
    split = make_split(labelled_images(spark, "clusterref"), seed=0, validation=0.2)
    model = register_copy(cluster.home / "models" / "clu" / "1", "cluref")
    promote(spark, config, model)
    run_nightly(spark, config, str(raw["night"]), labels="folders")
    final = {t: rows(spark, f"SELECT * FROM clusterref.{t}") for t in ("files", "images", "quarantine",
                                                                        "predictions")}
    summary = run_analysis(spark, config, AnalysisRequest(model=model, scale_bins=()))
    scores = rows(spark, f"SELECT * FROM clusterref.cluster_scores WHERE analysis = '{summary.analysis}'")
    return {"config": config, "ingested": ingested, "final": final, "scores": scores, "model": model,
            "split": {side: split.ids(side) for side in ("train", "validation", "test")}}


def rows(spark, query: str) -> list[dict]:
    return [r.asDict(recursive=True) for r in spark.sql(query).collect()]


def keyed(table: list[dict], columns: tuple[str, ...]) -> list[tuple]:
    return sorted(tuple(str(r[c]) for c in columns) for r in table)


IMAGE_COLUMNS = ("image_id", "path", "scale_bin", "nm_per_px", "label", "scale_source", "scale_label_text",
                 "width", "height", "phash")


def importable_from_path(environ: dict) -> list[str]:
    """PYTHONPATH entries a `semspark` package could be imported from (Spark's own zips are fine)."""
    return [e for e in environ.get("PYTHONPATH", "").split(os.pathsep) if e and (Path(e) / "semspark").exists()]


def test_executors_ran_the_shipped_environment_not_the_checkout(cluster, pipeline):
    shipped = pipeline["shipped_workers"]
    assert shipped
    for worker in shipped:
        # executor-python.sh execs the interpreter Spark unpacked into this executor's folder
        assert re.fullmatch(rf"{re.escape(str(cluster.dir))}/work/worker-[12]/app-[^/]+/\d+/environment/bin/python3\.11",
                            worker["exe"]), worker["exe"]
        assert not importable_from_path(worker["env"])
    # each executor copies the 2 GB archive into its java.io.tmpdir before unpacking it: under the
    # cluster's folder (deploy/cluster.sh), so that one killed meanwhile leaves nothing in /tmp
    executors = pipeline["shipped_executors"]
    assert executors
    for argv in executors:
        assert f"-Djava.io.tmpdir={cluster.dir}/local/executors" in argv, argv
    # the archive is readable by others (a node provisioned from it by another user): venv-pack wrote it 0600
    archive = Path(re.search(r"^ENV_ARCHIVE=(.*)$", (cluster.dir / "cluster.env").read_text(), re.M).group(1))
    assert archive.stat().st_mode & 0o777 == 0o644, oct(archive.stat().st_mode)
    environment = Path(shipped[0]["exe"]).parents[1]
    site = environment / "lib" / "python3.11" / "site-packages"
    assert (site / "semspark" / "__init__.py").is_file()  # from the wheel
    assert not list(site.glob("__editable__*"))            # no pointer back to a checkout
    for rank in pipeline["ranks"]:
        assert rank["exe"] == str(cluster.dir / "env" / "bin" / "python3.11")
        assert not importable_from_path(rank["env"])


def test_one_horovod_rank_per_executor(pipeline):
    ranks = pipeline["ranks"]
    assert sorted(r["env"]["HOROVOD_RANK"] for r in ranks) == ["0", "1"]
    # each rank runs in its own executor's folder: work/worker-N/app-ID/EXECUTOR
    assert len({Path(r["cwd"]).parts[-3] for r in ranks}) == 2


def test_ingest_survives_a_killed_driver_and_a_killed_worker(pipeline, reference, cluster, raw):
    assert "Lost executor" in pipeline["ingest_log"] or "ExecutorLostFailure" in pipeline["ingest_log"]
    files, images, quarantine = (pipeline["ingested"][t] for t in ("files", "images", "quarantine"))
    paths = [urlparse(r["path"]).path for r in files + quarantine]
    on_disk = {str(p) for p in raw["raw"].rglob("*") if p.is_file()}
    assert pipeline["files_after_driver_kill"] < len(on_disk)  # the first run was cut short
    # every file exactly once, in files or in quarantine; every distinct image once
    assert len(paths) == len(set(paths)) and set(paths) == on_disk
    assert sorted(r["image_id"] for r in images) == sorted(distinct_images(raw["raw"]))


def test_ingest_on_the_cluster_equals_local_mode(pipeline, reference, cluster):
    local, ours = reference["ingested"], pipeline["ingested"]
    assert keyed(ours["images"], IMAGE_COLUMNS) == keyed(local["images"], IMAGE_COLUMNS)
    assert keyed(ours["files"], ("path", "image_id", "role", "size")) == \
        keyed(local["files"], ("path", "image_id", "role", "size"))
    assert keyed(ours["quarantine"], ("path", "stage", "reason")) == \
        keyed(local["quarantine"], ("path", "stage", "reason"))
    # the stored pixels too: the Petastorm datasets hold the same PNG bytes per image
    import pyarrow.parquet as pq

    from semspark.storage import home_path

    def pixels(folder: Path) -> dict[str, bytes]:
        table = pq.read_table(folder, columns=["image_id", "image"], partitioning="hive").to_pylist()
        return {r["image_id"]: r["image"] for r in table}
    ours = pixels(cluster.home / "datasets" / "cluster")
    theirs = pixels(home_path("datasets/clusterref"))
    assert ours.keys() >= {r["image_id"] for r in local["images"]}
    assert all(ours[i] == theirs[i] for i in theirs)


def test_a_killed_rank_fails_the_run_with_a_message_and_the_rerun_resumes(pipeline, cluster):
    returncode, out = pipeline["killed_train"]
    assert returncode != 0
    # the first model had finished; the refit was cut after its first checkpoint and before its last
    assert pipeline["state_at_kill"]["completed_epochs"] == EPOCHS
    refit_done = pipeline["refit_state_at_kill"]["completed_epochs"]
    assert 1 <= refit_done < EPOCHS
    assert "refitting on training + validation (the first model is trained) failed" in out
    assert f"{refit_done} epochs are checkpointed: rerun with --run-id rk to resume" in out
    # the rerun trained no epoch of the first model again and resumed the refit where it stopped
    resumed = pipeline["resumed_train"]
    assert f"resuming run rk after epoch {EPOCHS}" in resumed
    assert "Training of run rk finished earlier: its evaluation is reused" in resumed   # no rank started for it
    assert f"resuming the refit of run rk after epoch {refit_done}" in resumed
    metadata = json.loads((cluster.home / "models" / "clu" / "1" / "metadata.json").read_text())
    assert metadata["run_id"] == "rk" and metadata["num_proc"] == 2
    assert file_sha256(cluster.home / "models" / "clu" / "1" / "model.keras") == \
        file_sha256(cluster.home / "runs" / "rk" / "refit" / "last.keras")
    for state, before in (("state.json", pipeline["state_at_kill"]),
                          ("refit/state.json", pipeline["refit_state_at_kill"])):
        history = {row["epoch"]: row for row in
                   json.loads((cluster.home / "runs" / "rk" / state).read_text())["history"]}
        assert sorted(history) == list(range(1, EPOCHS + 1)), state
        # the epochs checkpointed before the kill were kept, not trained again
        for epoch in before["history"]:
            assert history[epoch["epoch"]]["finished_at"] == epoch["finished_at"], state


def test_training_split_on_the_cluster_equals_local_mode(pipeline, reference, cluster):
    split = json.loads((cluster.home / "runs" / "rk" / "split.json").read_text())
    for side in ("train", "validation", "test"):
        assert split[side] == reference["split"][side], side


def test_predictions_and_analysis_on_the_cluster_equal_local_mode(pipeline, reference, cluster):
    ours = {r["image_id"]: r for r in cluster_rows(cluster, "predictions")}
    theirs = {r["image_id"]: r for r in reference["final"]["predictions"]}
    assert ours.keys() == theirs.keys() == {r["image_id"] for r in cluster_rows(cluster, "images")}
    for image_id, row in ours.items():
        other = theirs[image_id]
        assert row["category"] == other["category"]
        np.testing.assert_allclose(row["probabilities"], other["probabilities"], atol=1e-5)
        np.testing.assert_allclose(row["embedding"], other["embedding"], atol=1e-4)
    scores = [r for r in cluster_rows(cluster, "cluster_scores") if r["analysis"].startswith("clu-1_")]
    local = {(r["method"], r["k"]): r for r in reference["scores"]}
    assert {(r["method"], r["k"]) for r in scores} == set(local)
    for row in scores:
        other = local[(row["method"], row["k"])]
        assert row["images"] == other["images"] and row["labelled_images"] == other["labelled_images"]
        assert row["nmi"] == pytest.approx(other["nmi"], abs=0.05)


def test_nightly_on_the_cluster_equals_local_mode(pipeline, reference, cluster, raw):
    assert "succeeded" in pipeline["nightly"]
    final = reference["final"]
    assert keyed(cluster_rows(cluster, "images"), IMAGE_COLUMNS) == keyed(final["images"], IMAGE_COLUMNS)
    assert keyed(cluster_rows(cluster, "files"), ("path", "image_id", "role", "size")) == \
        keyed(final["files"], ("path", "image_id", "role", "size"))
    night = distinct_images(raw["night"])
    assert night <= {r["image_id"] for r in cluster_rows(cluster, "predictions")}


def test_the_cluster_is_loopback_only_authenticated_and_stops_cleanly(cluster, pipeline):
    # a client without the secret never gets in
    assert pipeline["stranger_rc"] != 0
    assert "SaslMessage" in pipeline["stranger"] or "All masters are unresponsive" in pipeline["stranger"]
    assert oct((cluster.dir / "secret").stat().st_mode & 0o777) == "0o600"
    daemons = {cluster.pid(d) for d in ("master.Master-1", "worker.Worker-1", "worker.Worker-2")}
    listening = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True).stdout.splitlines()
    ours = [line for line in listening if any(f"pid={p}," in line for p in daemons)]
    assert len(ours) >= 6  # master RPC + UI, and each worker's RPC + UI
    for line in ours:
        local = line.split()[3]
        assert local.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]"), line
    log = next((cluster.dir / "logs").glob("*Master-1*.out")).read_text()
    assert "authentication enabled" in log
    # stop: every daemon gone, the master's port free again
    cluster.script("stop")
    assert not any(Path(f"/proc/{pid}").exists() for pid in daemons)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", cluster.port)) != 0
