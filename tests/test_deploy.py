"""What deploy/ gives operators is well-formed and names things that exist: the Airflow DAG parses
and submits a job with arguments the CLI accepts; the Kubernetes ScheduledSparkApplication has the
fields the Spark operator requires; the cron entry calls a script that exists and passes bash -n.
(deploy/nightly.sh itself runs for real in tests/test_nightly.py.)"""
from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from semspark.cli import _parser
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?(,\d+(-\d+)?)*)(/\d+)?$")


def keyword_values(tree: ast.AST, call_name: str) -> dict[str, ast.expr]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == call_name:
            return {k.arg: k.value for k in node.keywords}
    raise AssertionError(f"no call to {call_name}")


def test_airflow_dag_parses_and_submits_the_nightly_job():
    source = (DEPLOY / "airflow" / "semspark_nightly.py").read_text()
    tree = ast.parse(source)
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("airflow.providers.apache.spark.operators.spark_submit", "SparkSubmitOperator") in imports
    submit = keyword_values(tree, "SparkSubmitOperator")
    application = submit["application"]
    assert isinstance(application, ast.JoinedStr)
    assert application.values[-1].value == "/jobs/nightly.py" and (ROOT / "jobs" / "nightly.py").exists()
    args = [a.value if isinstance(a, ast.Constant) else "/some/input" for a in submit["application_args"].elts]
    parsed = _parser().parse_args(["nightly", *args])  # the CLI accepts what the DAG passes
    assert parsed.input == "/some/input" and parsed.labels == "folders"
    dag = keyword_values(tree, "DAG")
    assert ast.literal_eval(dag["max_active_runs"]) == 1 and ast.literal_eval(dag["catchup"]) is False
    assert all(CRON_FIELD.match(f) for f in ast.literal_eval(dag["schedule"]).split())


def test_scheduled_spark_application_has_what_the_operator_requires():
    manifest = yaml.safe_load((DEPLOY / "kubernetes" / "nightly-scheduled.yaml").read_text())
    assert manifest["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    assert manifest["kind"] == "ScheduledSparkApplication"
    assert manifest["metadata"]["name"]
    spec = manifest["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert len(spec["schedule"].split()) == 5 and all(CRON_FIELD.match(f) for f in spec["schedule"].split())
    template = spec["template"]
    for key in ("type", "mode", "image", "mainApplicationFile", "sparkVersion", "driver", "executor"):
        assert template.get(key), key
    assert template["type"] == "Python" and template["mode"] in ("cluster", "client")
    lock = (ROOT / "requirements.lock").read_text()
    assert f"pyspark=={template['sparkVersion']}" in lock  # the operator's Spark is the one we run
    main = template["mainApplicationFile"]
    assert main.startswith("local:///opt/semspark/") and (ROOT / main[len("local:///opt/semspark/"):]).exists()
    parsed = _parser().parse_args(["nightly", *template["arguments"]])
    assert parsed.input.startswith("s3a://")
    for role in ("driver", "executor"):
        mounts = {m["mountPath"] for m in template[role]["volumeMounts"]}
        env = {e["name"]: e["value"] for e in template[role]["env"]}
        assert env["SEMSPARK_HOME"] in mounts  # models and staging on the shared volume
    assert {v["name"] for v in template["volumes"]} >= {m["name"] for m in template["driver"]["volumeMounts"]}


def test_cron_entry_calls_the_nightly_script():
    lines = [line for line in (DEPLOY / "cron" / "semspark-nightly").read_text().splitlines()
             if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]
    assert len(lines) == 1
    fields = lines[0].split()
    assert all(CRON_FIELD.match(f) for f in fields[:5]), fields[:5]
    user, command = fields[5], fields[6]
    assert user == "semspark" and command.endswith("/deploy/nightly.sh")
    script = DEPLOY / "nightly.sh"
    assert script.stat().st_mode & 0o111, "deploy/nightly.sh must be executable"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "jobs/nightly.py" in script.read_text() and (ROOT / "jobs" / "nightly.py").exists()


def test_nightly_script_refuses_to_overlap_a_running_night(tmp_path):
    import fcntl
    import os

    home = tmp_path / "home"
    home.mkdir()
    with open(home / "nightly.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a night that is still running
        result = subprocess.run(["bash", str(DEPLOY / "nightly.sh"), str(tmp_path / "raw")],
                                env=dict(os.environ, SEMSPARK_HOME=str(home)), capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 75 and "holds" in result.stderr


def lock_version(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M)
    assert match, package
    return match.group(1)


def project_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_gpu_dockerfile_builds_what_the_manifests_and_gpu_profile_name():
    dockerfile = (DEPLOY / "docker" / "Dockerfile.gpu").read_text()
    # Spark of the image = pyspark of the lock; CUDA 12.2 + cuDNN 8 are what TensorFlow 2.15 is built for
    assert f"ARG SPARK_VERSION={lock_version('pyspark')}" in dockerfile
    assert lock_version("tensorflow-cpu").startswith("2.15.")
    assert "nvidia/cuda:12.2.2-cudnn8-devel-ubuntu22.04" in dockerfile
    assert "nvidia/cuda:12.2.2-cudnn8-runtime-ubuntu22.04" in dockerfile
    # the GPU TensorFlow of the locked version replaces tensorflow-cpu; Horovod from the lock, with NCCL
    assert "-e '^tensorflow-cpu=='" in dockerfile and '"tensorflow==${TF_VERSION}"' in dockerfile
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in dockerfile and "hvd.nccl_built()" in dockerfile
    assert "sed -n 's/^horovod==//p' /src/requirements.lock" in dockerfile
    # semspark enters as a wheel, never the checkout; jobs and conf where the manifests look for them
    assert "pip install -q --no-deps /tmp/wheel/semspark-*.whl" in dockerfile and "-e /src" not in dockerfile
    copied = dict(re.findall(r"^COPY (jobs|conf) (\S+)$", dockerfile, re.M))
    assert copied == {"jobs": "/opt/semspark/jobs", "conf": "/opt/semspark/conf"}
    for tool in ("tesseract-ocr-eng", "openjdk-17-jre-headless", "python3.11"):
        assert tool in dockerfile
    assert f"semspark-gpu:{project_version()}" in dockerfile

    manifest = yaml.safe_load((DEPLOY / "kubernetes" / "train-gpu.yaml").read_text())
    assert manifest["apiVersion"] == "sparkoperator.k8s.io/v1beta2" and manifest["kind"] == "SparkApplication"
    spec = manifest["spec"]
    assert spec["image"] == f"semspark-gpu:{project_version()}"
    assert spec["sparkVersion"] == lock_version("pyspark")
    main = spec["mainApplicationFile"]
    assert main.startswith("local:///opt/semspark/jobs/") and (ROOT / main[len("local:///opt/semspark/"):]).exists()
    conf = spec["sparkConf"]
    assert conf["spark.pyspark.python"] == "/opt/semspark/env/bin/python"
    assert conf["spark.executor.resource.gpu.discoveryScript"] == "/opt/semspark/conf/gpu-discovery.sh"
    assert (ROOT / "conf" / "gpu-discovery.sh").exists()
    assert conf["spark.executor.resource.gpu.amount"] == conf["spark.task.resource.gpu.amount"] == "1"
    assert spec["executor"]["gpu"] == {"name": "nvidia.com/gpu", "quantity": 1}
    args = _parser().parse_args(["train", *spec["arguments"]])
    # one Horovod rank per GPU executor
    assert args.num_proc == spec["executor"]["instances"] and args.mixed_precision
    assert args.init.startswith("imagenet:/var/lib/semspark/")  # a local file on the shared volume
    env = {e["name"]: e["value"] for e in spec["executor"]["env"]}
    assert env["SEMSPARK_HOME"] in {m["mountPath"] for m in spec["executor"]["volumeMounts"]}

    nightly = yaml.safe_load((DEPLOY / "kubernetes" / "nightly-scheduled.yaml").read_text())["spec"]["template"]
    assert nightly["image"] == spec["image"]
    assert nightly["sparkConf"]["spark.pyspark.python"] == conf["spark.pyspark.python"]

    profile = dict(line.split(None, 1) for line in (ROOT / "conf" / "spark-gpu.conf").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    for key in ("spark.executor.resource.gpu.amount", "spark.task.resource.gpu.amount",
                "spark.executor.resource.gpu.discoveryScript", "spark.pyspark.python"):
        assert profile[key].strip() == str(conf[key]), key


def test_gpu_discovery_script_speaks_sparks_format():
    out = subprocess.run(["bash", str(ROOT / "conf" / "gpu-discovery.sh")], capture_output=True, text=True,
                         check=True).stdout
    import json

    found = json.loads(out)  # no GPU here: an empty list, in the format Spark parses
    assert found["name"] == "gpu" and isinstance(found["addresses"], list)


def test_cluster_scripts_are_executable_and_parse():
    for name in ("cluster.sh", "package.sh", "executor-python.sh"):
        script = DEPLOY / name
        assert script.stat().st_mode & 0o111, f"deploy/{name} must be executable"
        assert subprocess.run(["bash" if name != "executor-python.sh" else "sh", "-n", str(script)]).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 MB filesystem (tmpfs): smaller than one copy of the packaged environment."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_cluster_and_package_refuse_a_disk_too_small_and_say_what_to_do(small_disk):
    # CI once ran the cluster test with 14 GB free: executors died with "No space left on device" and
    # Spark relaunched them for five minutes. A first start now refuses at once and says why. (Free
    # ports: were the check to let it through, no other test's master would be in its way.)
    started = subprocess.run(["bash", str(DEPLOY / "cluster.sh"), "start", "--dir", str(small_disk / "cluster"),
                              "--port", str(free_port()), "--webui-port", str(free_port())],
                             capture_output=True, text=True, timeout=900)
    assert started.returncode == 1, started.stderr[-2000:]
    message = started.stderr.strip().splitlines()[-1]
    assert re.search(r"has 0 GB free; a shipped application on 2 workers needs about \d+ GB", message), message
    assert "--dir on a larger disk" in message
    assert not list((small_disk / "cluster" / "pids").glob("*.pid"))  # no daemon was started
    # The archive itself: refused before venv-pack fills the disk, nothing half-written left behind
    packed = subprocess.run(["bash", str(DEPLOY / "package.sh"), "--format", "tar", "--output", str(small_disk / "dist")],
                            capture_output=True, text=True, timeout=900)
    assert packed.returncode == 1, packed.stderr[-2000:]
    assert re.search(r"has \d+ MB free; the archive needs about \d+ MB: .*--output on a larger disk",
                     packed.stderr), packed.stderr[-2000:]
    assert [p.name for p in (small_disk / "dist").iterdir()] == [".package.lock"]
    assert not list(ROOT.glob(".package-build.*"))


def test_a_running_cluster_short_of_disk_is_warned_not_stopped(small_disk):
    # A restart (`start` while the master runs, e.g. to bring back a worker that died) on a disk that
    # has filled since the first start: refusing would leave the running cluster short of a worker, so
    # it warns and goes on. The master is a real one, started as cluster.sh starts it (its first start
    # here would be refused: that is the test above).
    cluster = small_disk / "cluster"
    spark_home = ROOT / ".venv" / "lib" / "python3.11" / "site-packages" / "pyspark"
    port, webui_port = free_port(), free_port()
    daemons = {**os.environ, "SPARK_HOME": str(spark_home), "SPARK_PID_DIR": str(cluster / "pids"),
               "SPARK_LOG_DIR": str(cluster / "logs"), "SPARK_IDENT_STRING": "semspark", "SPARK_LOCAL_IP": "127.0.0.1"}
    cluster_sh = ["bash", str(DEPLOY / "cluster.sh")]
    start = cluster_sh + ["start", "--dir", str(cluster), "--port", str(port), "--webui-port", str(webui_port),
                          "--workers", "1"]
    refused = subprocess.run(start, capture_output=True, text=True, timeout=900)
    assert refused.returncode == 1, refused.stderr[-2000:]   # the configuration is written, nothing started
    # What a first start on a larger disk leaves: env/ unpacked from the archive (2 GB do not fit on
    # 64 MB; its stamp is what tells a restart not to unpack it again) and the master, started here
    # as cluster.sh starts it, with the configuration (secret included) the refused start wrote
    archive = (cluster / "cluster.env").read_text().split("ENV_ARCHIVE=")[1].split()[0]
    (cluster / "env").mkdir()
    (cluster / "env" / ".archive-inputs").write_text(Path(archive + ".inputs.sha256").read_text())
    # stopped, env/ unpacked: refused with the reason (it once ended silently, status 1, whenever env/
    # was already unpacked), and the reason counts no second unpacked copy
    refused = subprocess.run(start, capture_output=True, text=True, timeout=900)
    assert refused.returncode == 1
    assert re.search(r"has 0 GB free; a shipped application on 1 worker needs about \d+ GB", refused.stderr), (
        refused.stderr[-2000:])
    assert "one more unpacked copy in env/" not in refused.stderr
    try:
        subprocess.run([str(spark_home / "sbin" / "spark-daemon.sh"), "start", "org.apache.spark.deploy.master.Master",
                        "1", "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(webui_port),
                        "--properties-file", str(cluster / "daemon.conf")],
                       env=daemons, capture_output=True, check=True, timeout=120)
        restarted = subprocess.run(start, capture_output=True, text=True, timeout=900)
        assert restarted.returncode == 0, restarted.stderr[-2000:]
        assert re.search(r"warning: \S+ has 0 GB free; a shipped application on 1 worker needs about \d+ GB",
                         restarted.stderr), restarted.stderr[-2000:]
        assert "master already running" in restarted.stderr
        status = subprocess.run(cluster_sh + ["status", "--dir", str(cluster)], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        running = [line for line in status.stdout.splitlines() if line.startswith("running")]
        assert len(running) == 2, status.stdout  # the master went on, and the missing worker came back
    finally:
        subprocess.run(cluster_sh + ["stop", "--dir", str(cluster)], capture_output=True, timeout=120)
