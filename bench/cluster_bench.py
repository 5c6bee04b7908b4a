"""Benchmark of the cluster stage: the same ingest by spark-submit on the standalone cluster of
deploy/cluster.sh (two workers x one core), against local[2] in the same run. Prints one JSON document.

    .venv/bin/python bench/cluster_bench.py [--n 120] [--rounds 2] [--width 384]

Per round, in alternating order (the machine's speed drifts; pair the figures of one round):
- local:       `semspark ingest` with local[2] (one JVM, the driver's Python in the tasks);
- provisioned: spark-submit to the cluster, executors on the environment unpacked once per node;
- shipped:     spark-submit to the cluster with --archives: every application's executors fetch
               and unpack the 2 GB environment first.
Each on a fresh SEMSPARK_HOME and the same files. Also times deploy/package.sh (fresh builds as
.tar and as .tar.gz, and the up-to-date check) and the cluster's start, and measures the disk a
shipped application takes (the file system's used bytes sampled every 0.2 s during the submit, the
peak over what was used before it: what deploy/cluster.sh start's disk check must leave room for).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
sys.path.insert(0, str(ROOT))

from semspark.synth.generate import generate  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} failed:\n{result.stderr[-3000:]}{result.stdout[-2000:]}")
    return time.perf_counter() - started


class PeakDiskUse:
    """The most bytes the file system holding ``path`` had in use above its use at the start."""

    def __init__(self, path: Path):
        self.path, self.peak, self._done = path, 0, threading.Event()

    def __enter__(self):
        self.start = shutil.disk_usage(self.path).used
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.2):
            self.peak = max(self.peak, shutil.disk_usage(self.path).used - self.start)

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--width", type=int, default=384)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="semspark-cluster-bench-"))
    raw = work / "raw"
    generate(raw, args.n, seed=3, width=args.width, height=args.width * 3 // 4)
    conf = work / "semspark.yaml"
    conf.write_text("ingest:\n  files_per_task: 8\n")
    base = dict(os.environ, SEMSPARK_CONF=str(conf), PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    base.pop("SEMSPARK_MASTER", None)
    cluster_home = work / "cluster-home"
    cluster_env = dict(base, SEMSPARK_HOME=str(cluster_home))
    port, webui = free_port(), free_port()
    figures: dict = {}
    try:
        figures["package_fresh_s"] = round(timed(["bash", str(ROOT / "deploy" / "package.sh"), "--format", "tar",
                                                  "--output", str(work / "dist")], base), 1)
        figures["package_fresh_targz_s"] = round(timed(["bash", str(ROOT / "deploy" / "package.sh"), "--format",
                                                        "tar.gz", "--output", str(work / "dist")], base), 1)
        figures["package_up_to_date_s"] = round(timed(["bash", str(ROOT / "deploy" / "package.sh"), "--format",
                                                       "tar", "--output", str(work / "dist")], base), 2)
        figures["cluster_start_s"] = round(timed(["bash", str(ROOT / "deploy" / "cluster.sh"), "start", "--port",
                                                  str(port), "--webui-port", str(webui)], cluster_env), 1)
        figures["archive_gb"] = round(next((work / "dist").glob("semspark-env-*.tar")).stat().st_size / 1024 ** 3, 2)
        figures["env_unpacked_gb"] = round(sum(f.stat().st_size for f in (cluster_home / "cluster" / "env").rglob("*")
                                               if f.is_file() and not f.is_symlink()) / 1024 ** 3, 2)
        rounds, shipped_peak_gb = [], []
        for number in range(args.rounds):
            order = ["local", "provisioned", "shipped"]
            order = order if number % 2 == 0 else order[::-1]
            seconds = {}
            for mode in order:
                home = work / f"home-{mode}-{number}"
                if mode == "local":
                    env = dict(base, SEMSPARK_HOME=str(home), SEMSPARK_MASTER="local[2]")
                    command = [str(VENV_BIN / "semspark"), "ingest", "--input", str(raw), "--labels", "folders"]
                else:
                    # the cluster's configuration stays in cluster_home (--dir); the catalog is this run's
                    env = dict(base, SEMSPARK_HOME=str(home),
                               SEMSPARK_SHIP="provisioned" if mode == "provisioned" else "archive")
                    command = ["bash", str(ROOT / "deploy" / "cluster.sh"), "submit", "--dir",
                               str(cluster_home / "cluster"), str(ROOT / "jobs" / "ingest.py"),
                               "--input", str(raw), "--labels", "folders"]
                with PeakDiskUse(work) as disk:
                    seconds[mode] = round(timed(command, env), 1)
                if mode == "shipped":
                    shipped_peak_gb.append(round(disk.peak / 1024 ** 3, 1))
                shutil.rmtree(home, ignore_errors=True)
            rounds.append(seconds)
    finally:
        subprocess.run(["bash", str(ROOT / "deploy" / "cluster.sh"), "stop"], env=cluster_env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    def ratio(a: str, b: str) -> list[float]:
        return [round(r[a] / r[b], 2) for r in rounds]

    print(json.dumps({
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        "images": args.n, "width": args.width,
        **figures,
        "ingest_seconds_per_round": rounds,
        "provisioned_over_local": ratio("provisioned", "local"),
        "shipped_over_provisioned": ratio("shipped", "provisioned"),
        "shipping_overhead_s": [round(r["shipped"] - r["provisioned"], 1) for r in rounds],
        "shipped_peak_disk_gb": shipped_peak_gb,
    }, indent=2))


if __name__ == "__main__":
    main()
