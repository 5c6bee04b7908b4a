"""Benchmark of a year of nights: does a night's cost follow the night or the repository? Prints JSON.

    .venv/bin/python bench/scale_bench.py [--sizes 2000,8000,32000] [--nights 5] [--night-images 100]
                                          [--width 256 --height 192] [--cores 2]
                                          [--table-files 64] [--dataset-files-per-bin 16]

A repository of generated SEM images per N (small images are fine: the question is how costs grow,
not what one image costs), each with its own catalog database and dataset in one warehouse, is
ingested in bulk; then five rounds of nights, each round a night of the same 100 new images at
every N in turn (so that the machine's drift over the run, tens of percent here, falls on every N
alike), run the nightly's steps in this process (ingest, score with the production model, compact
past the thresholds: the configured ones, or lower ones to see them bound the file counts within
a few nights), on the embedded default. For each night: wall time per step; the bytes
Spark read (its input metrics, from its REST API) in the ingest (listing and comparing against
the tables) and in the scoring, against the new images' stored bytes; the dataset files the
scoring read of all; the files under the warehouse and the dataset after the night. The bulk loads
give ingest throughput from listing to tables, in images/s per core.

The baseline, measured in the same run, is the night at the smallest N: the issue's targets are
ratios to it (a night at N = 32,000 within 1.2x of a night at N = 2,000) and the scoring's bytes
within 2x of the new images' stored bytes at every N. The Spark start is not in a night's time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CHUNK = 500


def _generate(job) -> int:
    from semspark.synth.generate import generate

    folder, n, seed, width, height = job
    return len(generate(folder, n, seed=seed, width=width, height=height))


def grow(repository: Path, have: int, want: int, width: int, height: int, cores: int) -> int:
    """Add generated images in chunks of CHUNK (one folder each) until the repository holds ``want``."""
    jobs = []
    while have < want:
        n = min(CHUNK, want - have)
        jobs.append((repository / "bulk" / f"chunk{have // CHUNK:04d}", n, 10_000 + have // CHUNK, width, height))
        have += n
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(_generate, jobs))
    return have


class InputMetrics:
    """Bytes Spark read per job group, from the application's REST API (the UI's port)."""

    def __init__(self, spark):
        self.spark = spark
        self.base = f"{spark.sparkContext.uiWebUrl}/api/v1/applications/{spark.sparkContext.applicationId}"

    def _get(self, path: str):
        with urllib.request.urlopen(self.base + path, timeout=60) as reply:
            return json.loads(reply.read())

    def job_seconds(self, group: str, top: int = 8) -> list[list]:
        """The group's Spark jobs by where they were called, slowest first: [call site, jobs, seconds]
        (what grows with the repository shows here first)."""
        from datetime import datetime

        def seconds(job) -> float:
            if not job.get("completionTime") or not job.get("submissionTime"):
                return 0.0
            stamp = "%Y-%m-%dT%H:%M:%S.%f%Z"
            return (datetime.strptime(job["completionTime"], stamp) - datetime.strptime(job["submissionTime"], stamp)).total_seconds()

        sites: dict[str, list] = {}
        for job in self._get("/jobs"):
            if job.get("jobGroup") == group:
                site = sites.setdefault(job["name"].split(" at ")[-1], [0, 0.0])
                site[0] += 1
                site[1] += seconds(job)
        ranked = sorted(([name, n, round(s, 2)] for name, (n, s) in sites.items()), key=lambda r: -r[2])
        return ranked[:top]

    def read_bytes(self, group: str) -> int:
        stage_ids = {s for job in self._get("/jobs") if job.get("jobGroup") == group for s in job["stageIds"]}
        return sum(stage["inputBytes"] for stage in self._get("/stages") if stage["stageId"] in stage_ids)


def files_under(folder: Path) -> int:
    return sum(1 for _, dirs, files in os.walk(folder) for f in files
               if not f.startswith((".", "_")) and (f.endswith(".parquet") or f.startswith("part-")))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,8000,32000")
    parser.add_argument("--nights", type=int, default=5)
    parser.add_argument("--night-images", type=int, default=100)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--table-files", type=int, help="compaction.table_files (default: the configured 64)")
    parser.add_argument("--dataset-files-per-bin", type=int,
                        help="compaction.dataset_files_per_bin (default: the configured 16; lower to see compaction "
                             "bound the file counts within a few nights)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    home = Path(tempfile.mkdtemp(prefix="semspark-scale-bench-"))
    os.environ["SEMSPARK_HOME"] = str(home / "home")
    from pyspark.sql import functions as F

    from infer_bench import register
    from semspark.config import CatalogConfig, CompactionConfig, Config, IngestConfig
    from semspark.dataset import dataset_url
    from semspark.infer.job import promote, run_inference
    from semspark.ingest.job import run_ingest
    from semspark.compaction import compact, needs_compaction
    from semspark.session import build_session
    from semspark.synth.morphology import CATEGORIES

    compaction = CompactionConfig(**{k: v for k, v in (("table_files", args.table_files),
                                                       ("dataset_files_per_bin", args.dataset_files_per_bin)) if v})
    # one catalog, dataset and input folder per N in one warehouse: their nights run in turn, so
    # that the machine's drift over the run (tens of percent here) falls on every N alike
    configs = {size: Config(catalog=CatalogConfig(database=f"scale{size}"),
                            ingest=IngestConfig(files_per_task=64, dataset_dir=f"datasets/scale{size}"),  # 299 px
                            compaction=compaction) for size in sizes}
    spark = build_session(configs[sizes[0]], app_name="scale-bench", extra={
        "spark.master": f"local[{args.cores}]", "spark.ui.enabled": "true", "spark.ui.port": str(free_port()),
        "spark.ui.showConsoleProgress": "false", "spark.ui.retainedJobs": "100000", "spark.ui.retainedStages": "100000"})
    metrics = InputMetrics(spark)
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": args.cores,
                          "python": platform.python_version()},
              "width": args.width, "height": args.height, "night_images": args.night_images,
              "compaction": {"table_files": compaction.table_files, "dataset_files_per_bin": compaction.dataset_files_per_bin},
              "sizes": {}}
    try:
        model = register("compact_cnn", list(CATEGORIES), 64, "nightly-bench")
        for size in sizes:
            config, repository = configs[size], home / f"raw{size}"
            started = time.monotonic()
            grow(repository, 0, size, args.width, args.height, args.cores)
            generated = time.monotonic() - started
            started = time.monotonic()
            bulk = run_ingest(spark, config, str(repository), labels="folders")
            loaded = time.monotonic() - started
            promote(spark, config, model)
            run_inference(spark, config, model)             # the bulk's scoring is not a night's
            report["sizes"][str(size)] = {
                "generate_s": round(generated, 1), "bulk_new_images": bulk.new_images, "bulk_ingest_s": round(loaded, 1),
                "ingest_images_per_s_per_core": round(bulk.new_images / loaded / args.cores, 2),
                "bulk_phase_seconds": bulk.phase_seconds, "nights": []}
        for night_no in range(1, args.nights + 1):
            for size in sizes:                              # the same new images at every N
                config, repository = configs[size], home / f"raw{size}"
                entry = report["sizes"][str(size)]
                folder = repository / "nights" / f"night{night_no:03d}"
                _generate((folder, args.night_images, 90_000 + night_no, args.width, args.height))
                night = {}
                sc = spark.sparkContext
                group = f"{size}-{night_no}"
                t0 = time.monotonic()
                sc.setJobGroup(f"ingest-{group}", "night ingest")
                ingested = run_ingest(spark, config, str(repository), labels="folders")
                t1 = time.monotonic()
                sc.setJobGroup(f"infer-{group}", "night scoring")
                scored = run_inference(spark, config, model)
                t2 = time.monotonic()
                sc.setJobGroup(f"compact-{group}", "night compaction")
                compacted = compact(spark, config) if needs_compaction(spark, config) else None
                t3 = time.monotonic()
                sc.setJobGroup("bench", "measuring")
                database = config.catalog.database
                new_ids = spark.table(f"{database}.images").filter(F.col("ingest_run") == ingested.run_id).select("image_id")
                stored = (spark.read.parquet(dataset_url(config)).join(new_ids, "image_id", "left_semi")
                          .agg(F.sum(F.length("image"))).first()[0] or 0)
                night.update(
                    seconds=round(t3 - t0, 2), ingest_s=round(t1 - t0, 2), scoring_s=round(t2 - t1, 2),
                    compaction_s=round(t3 - t2, 2), new_images=ingested.new_images, scored=scored.scored,
                    ingest_phase_seconds=ingested.phase_seconds,
                    ingest_bytes_read=metrics.read_bytes(f"ingest-{group}"),
                    scoring_bytes_read=metrics.read_bytes(f"infer-{group}"),
                    ingest_jobs=metrics.job_seconds(f"ingest-{group}"),
                    new_images_stored_bytes=int(stored),
                    dataset_files_read=scored.dataset_files_read, dataset_files=scored.dataset_files,
                    compacted=compacted.files_before - compacted.files_after if compacted else 0,
                    warehouse_files=files_under(home / "home" / "warehouse" / f"{database}.db"),
                    dataset_files_after=files_under(Path(dataset_url(config)[len("file://"):])))
                night["scoring_bytes_over_new_stored"] = (round(night["scoring_bytes_read"] / stored, 2)
                                                          if stored else None)
                entry["nights"].append(night)
                print(json.dumps({"size": size, "night": night_no, **night}), file=sys.stderr, flush=True)
        for size in sizes:
            entry = report["sizes"][str(size)]
            seconds = sorted(n["seconds"] for n in entry["nights"])
            entry["night_median_s"] = seconds[len(seconds) // 2]
            # a night's own work: its ingest and scoring, without the compaction that the low
            # thresholds of a short benchmark make run on some nights and not others
            own = sorted(n["ingest_s"] + n["scoring_s"] for n in entry["nights"])
            entry["own_work_median_s"] = round(own[len(own) // 2], 2)
        first = report["sizes"][str(sizes[0])]["night_median_s"]
        report["night_median_ratio_to_smallest"] = {
            size: round(entry["night_median_s"] / first, 2) for size, entry in report["sizes"].items()}
        report["own_work_median_ratio_to_smallest"] = {
            size: round(entry["own_work_median_s"] / report["sizes"][str(sizes[0])]["own_work_median_s"], 2)
            for size, entry in report["sizes"].items()}
        report["scoring_bytes_over_new_stored_max"] = max(
            n["scoring_bytes_over_new_stored"] or 0 for e in report["sizes"].values() for n in e["nights"])
        report["targets"] = {"night_ratio_largest_to_smallest": 1.2, "scoring_bytes_over_new_stored": 2.0,
                             "ingest_images_per_s_per_core": 30.0}
    finally:
        spark.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
