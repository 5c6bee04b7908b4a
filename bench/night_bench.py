"""Benchmark of `semspark nightly` as a scheduler runs it: a new process each night, Spark's start
included, on the embedded default. Prints one JSON document.

    .venv/bin/python bench/night_bench.py [--repository 2000] [--nights 3] [--night-images 40]

A scratch SEMSPARK_HOME gets a repository of generated 512-px images (`semspark synth`, `semspark
ingest`), a small model trained on it and promoted (`semspark train`, `semspark promote`); then
each night 40 new images are generated into the input folder and `semspark nightly --input ...`
runs in its own process, timed from its start to its exit. Each night runs twice, in turn: with the
configured JIT of the embedded JVM (`spark.driver_jit: c1`, the default) and, as the baseline
measured in the same run, with the full JIT (`full`: C1 then C2, the JVM's own default); the
repository grows by 40 images a night either way. The bulk load is timed under both too. Per
night: the wall time, and the nightly's own step times from its log (the time until the ingest
starts, the ingest, the scoring, whether it compacted). Target (issue 13): a night of 40 images in at most 15 s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEMSPARK = str(Path(sys.executable).parent / "semspark")
sys.path.insert(0, str(ROOT / "bench"))


def run(arguments: list[str], env: dict, log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as err:
        done = subprocess.run([SEMSPARK, *arguments], env=env, stdout=subprocess.DEVNULL, stderr=err)
    if done.returncode not in (0, 3):
        raise SystemExit(f"semspark {' '.join(arguments)} failed ({done.returncode}): see {log}")
    return time.perf_counter() - started


def steps(log: Path) -> dict:
    """The nightly's own timings from its log lines: from the Spark session's start to the ingest's
    start (the catalog's first use, the run log), the ingest, the scoring, and whether it compacted."""
    import datetime

    text = log.read_text()
    out = {"compacted": "compacting small files" in text}
    stamps = {}
    for line in text.splitlines():
        when = re.match(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line)
        if when and "embedded Spark" in line:
            stamps.setdefault("spark", datetime.datetime.strptime(when.group(1), "%Y-%m-%d %H:%M:%S,%f"))
        if when and re.search(r"nightly \S+: ingest /", line):
            stamps.setdefault("ingest", datetime.datetime.strptime(when.group(1), "%Y-%m-%d %H:%M:%S,%f"))
    out["spark_to_ingest_s"] = (round((stamps["ingest"] - stamps["spark"]).total_seconds(), 1)
                                if len(stamps) == 2 else None)
    for name, pattern in (("ingest_s", r"ingest done in ([0-9.]+) s"), ("scoring_s", r"scoring done in ([0-9.]+) s")):
        found = re.search(pattern, text)
        out[name] = float(found.group(1)) if found else None
    return out


def main() -> None:
    from ingest_bench import cpu_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=int, default=2000)
    parser.add_argument("--nights", type=int, default=3)
    parser.add_argument("--night-images", type=int, default=40)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="semspark-night-bench-"))
    env = {**os.environ, "SEMSPARK_HOME": str(home)}
    raw, logs = home / "raw", home / "logs"
    logs.mkdir()
    configs = {}
    for jit in ("c1", "full"):
        configs[jit] = home / f"{jit}.yaml"
        configs[jit].write_text(f"spark: {{driver_jit: {jit}}}\n")

    # the categories are the top folders of the input (--labels folders): the bulk is the root
    run(["synth", "--out", str(raw), "--n", str(args.repository), "--seed", "1"], env, logs / "synth.log")
    # the bulk load twice: with the full JIT into a scratch home (the baseline), then with C1 into
    # the home the nights run on
    scratch = {**env, "SEMSPARK_HOME": str(home / "bulk-full")}
    bulk_full_s = run(["--config", str(configs["full"]), "ingest", "--input", str(raw), "--labels", "folders"],
                      scratch, logs / "bulk-full.log")
    shutil.rmtree(home / "bulk-full", ignore_errors=True)
    bulk_s = run(["--config", str(configs["c1"]), "ingest", "--input", str(raw), "--labels", "folders"], env,
                 logs / "bulk.log")
    train_s = run(["train", "--arch", "compact_cnn", "--epochs", "2", "--input-size", "64", "--num-proc", "1",
                   "--name", "nightbench"], env, logs / "train.log")
    run(["promote", "--model", "nightbench/latest"], env, logs / "promote.log")

    nights = {"c1": [], "full": []}
    for night in range(args.nights):
        for jit in ("c1", "full") if night % 2 == 0 else ("full", "c1"):
            folder = raw / "nights" / f"{night:02d}-{jit}"
            run(["synth", "--out", str(folder), "--n", str(args.night_images), "--seed", str(100 + night * 2 + (jit == "c1"))],
                env, logs / "synth.log")
            log = logs / f"night-{night:02d}-{jit}.log"
            seconds = run(["--config", str(configs[jit]), "nightly", "--input", str(raw), "--labels", "folders"], env, log)
            nights[jit].append({"wall_s": round(seconds, 1), **steps(log)})

    medians = {jit: statistics.median(n["wall_s"] for n in runs) for jit, runs in nights.items()}
    report = {"benchmark": "night", "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                                                "python": platform.python_version()},
              "repository_images": args.repository, "night_images": args.night_images,
              "bulk_ingest_s": {"c1": round(bulk_s, 1), "full": round(bulk_full_s, 1)}, "train_s": round(train_s, 1),
              "nights": nights, "median_wall_s": medians,
              "c1_over_full": round(medians["c1"] / medians["full"], 3),
              "target": {"night_s": 15, "met": medians["c1"] <= 15}}
    print(json.dumps(report, indent=2))
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
