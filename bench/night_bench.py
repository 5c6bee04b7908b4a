"""Benchmark of `semspark nightly` as a scheduler runs it: a new process each night, Spark's start
included, on the embedded default. Prints one JSON document.

    .venv/bin/python bench/night_bench.py [--repository 2000] [--nights 3] [--night-images 40]

A scratch SEMSPARK_HOME gets a repository of generated 512-px images (`semspark synth`, `semspark
ingest`), a small model trained on it and promoted (`semspark train`, `semspark promote`); then
each night 40 new images are generated into the input folder and `semspark nightly --input ...`
runs in its own process, timed from its start to its exit. Each night runs three times, in turn:
with the defaults (`spark.driver_jit: c1`, `spark.class_archive: auto`: the JVM maps the classes
the nightly's first run on the machine kept; that first run, which makes the archive, is timed
apart before the nights), without the class archive (`off`), and with neither (the full JIT: C1 then
C2, the JVM's own default); the repository grows by 40 images a night each time. The bulk load is
timed with C1 and with the full JIT, both without an archive. Per night: the wall time, and the
nightly's own step times from its log (the time until the ingest starts, the ingest, the scoring,
whether it compacted). Target (issue 13): a night of 40 images in at most 15 s.

    .venv/bin/python bench/night_bench.py --against COMMIT

adds a fourth arm: the nightly of another version of semspark (COMMIT's package and conf/, `git
archive`, put first on PYTHONPATH for the driver and Spark's Python workers alike; the JVM, the environment and
the catalog are shared) with the defaults and a class archive of its own, in turn with the others on
the same catalog: a change's effect on the night, measured in one run (``default_over_against``).
COMMIT must read the catalog this version writes and know the defaults' settings (2026-12-01 on).
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
        # from the log's folder, not the caller's: Spark starts its Python workers with `python -m`,
        # which puts the working directory first on their path, so run from a checkout they would
        # import its semspark/ whatever PYTHONPATH says (and --against would time the checkout's workers)
        done = subprocess.run([SEMSPARK, *arguments], env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=log.parent)
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
    parser.add_argument("--against", metavar="COMMIT", help="also time the nightly of this version of semspark")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="semspark-night-bench-"))
    env = {**os.environ, "SEMSPARK_HOME": str(home)}
    raw, logs = home / "raw", home / "logs"
    logs.mkdir()
    archives = home / "jvm"   # the defaults' class archive, made by this run (not the machine's own)
    variants = {"default": f"spark: {{class_archive_dir: '{archives}'}}\n",
                "no_archive": "spark: {class_archive: 'off'}\n",
                "full_jit": "spark: {driver_jit: full, class_archive: 'off'}\n"}
    envs = {name: env for name in variants}
    if args.against:
        other = home / "against"
        other.mkdir()
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{args.against}^{{commit}}"],
                                capture_output=True, text=True)
        if commit.returncode != 0:
            raise SystemExit(f"--against {args.against}: not a commit of {ROOT} ({commit.stderr.strip()})")
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit.stdout.strip(), "semspark", "conf", "pyproject.toml"],
                                 capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(other)], input=archive.stdout, check=True)
        variants["against"] = f"spark: {{class_archive_dir: '{home / 'jvm-against'}'}}\n"
        # first on the path for the driver and, through the environment, Spark's Python workers:
        # ahead of the checkout's editable install, which Python consults after its path
        envs["against"] = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(other), env.get("PYTHONPATH")]))}
    configs = {}
    for name, text in variants.items():
        configs[name] = home / f"{name}.yaml"
        configs[name].write_text(text)

    # the categories are the top folders of the input (--labels folders): the bulk is the root
    run(["synth", "--out", str(raw), "--n", str(args.repository), "--seed", "1"], env, logs / "synth.log")
    # the bulk load twice: with the full JIT into a scratch home (the baseline), then with C1 into
    # the home the nights run on
    scratch = {**env, "SEMSPARK_HOME": str(home / "bulk-full")}
    bulk_full_s = run(["--config", str(configs["full_jit"]), "ingest", "--input", str(raw), "--labels", "folders"],
                      scratch, logs / "bulk-full.log")
    shutil.rmtree(home / "bulk-full", ignore_errors=True)
    bulk_s = run(["--config", str(configs["no_archive"]), "ingest", "--input", str(raw), "--labels", "folders"], env,
                 logs / "bulk.log")
    train_s = run(["train", "--arch", "compact_cnn", "--epochs", "2", "--input-size", "64", "--num-proc", "1",
                   "--name", "nightbench"], env, logs / "train.log")
    run(["promote", "--model", "nightbench/latest"], env, logs / "promote.log")

    def night(name: str, label: str, seed: int) -> dict:
        folder = raw / "nights" / label
        run(["synth", "--out", str(folder), "--n", str(args.night_images), "--seed", str(seed)], env, logs / "synth.log")
        log = logs / f"night-{label}.log"
        seconds = run(["--config", str(configs[name]), "nightly", "--input", str(raw), "--labels", "folders"],
                      envs[name], log)
        return {"wall_s": round(seconds, 1), **steps(log)}

    making_archive = night("default", "making-archive", 99)
    if args.against:
        making_archive_against = night("against", "making-archive-against", 98)
    names = list(variants)
    # each arm first, second, ... in turn over the nights: a machine that slows down as it warms
    # (or as the catalog grows) does not favour one arm
    orders = [names[start:] + names[:start] for start in range(len(names))]
    nights = {name: [] for name in variants}
    for number in range(args.nights):
        for name in orders[number % len(orders)]:
            nights[name].append(night(name, f"{number:02d}-{name}", 100 + number * len(names) + names.index(name)))

    medians = {name: statistics.median(n["wall_s"] for n in runs) for name, runs in nights.items()}
    report = {"benchmark": "night", "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                                                "python": platform.python_version()},
              "repository_images": args.repository, "night_images": args.night_images,
              "bulk_ingest_s": {"c1": round(bulk_s, 1), "full_jit": round(bulk_full_s, 1)}, "train_s": round(train_s, 1),
              "first_night_making_the_archive": making_archive, "nights": nights, "median_wall_s": medians,
              "default_over_no_archive": round(medians["default"] / medians["no_archive"], 3),
              "no_archive_over_full_jit": round(medians["no_archive"] / medians["full_jit"], 3),
              "target": {"night_s": 15, "met": medians["default"] <= 15}}
    if args.against:
        report["against"] = {"commit": args.against, "first_night_making_the_archive": making_archive_against}
        report["default_over_against"] = round(medians["default"] / medians["against"], 3)
    print(json.dumps(report, indent=2))
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
