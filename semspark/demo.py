"""``semspark demo``: the pipeline end to end on generated data, on the embedded default.

Today: generate a synthetic SEM data set (plus the real samples from ../shared/samples/real when
present, and a few broken files to show the quarantine), ingest it twice (the second run must add
nothing), print the summary, a few SQL answers, and how well the scale reader did against the
generator's truth; then train a small AlexNet with two Horovod ranks on the labelled images and
show its test accuracy; promote it to production, run the nightly job on a new night's worth of
images (it ingests them and scores every image with the production model) and a second time (it
does nothing), and query the predictions; end with the paper's unsupervised study of the 1um-2um
images (autoencoder, 2-NN, five hierarchies, NMI) and its HTML report.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from semspark.analysis.job import AnalysisRequest, run_analysis
from semspark.catalog import format_result, run_sql
from semspark.config import PROJECT_ROOT, Config, semspark_home
from semspark.infer.job import promote
from semspark.ingest.job import run_ingest
from semspark.nightly import run_nightly
from semspark.session import console_progress, session_scope
from semspark.synth.generate import MANIFEST, generate, read_manifest
from semspark.train.job import TrainRequest, run_training

REAL_SAMPLES = PROJECT_ROOT.parent / "shared" / "samples" / "real"


def prepare_demo_input(folder: Path, n: int, seed: int) -> Path:
    """Synthetic images (deterministic, so kept between runs), real samples, broken files."""
    marker = folder / f".generated-n{n}-seed{seed}"
    if not marker.exists():
        if folder.exists():
            shutil.rmtree(folder)
        generate(folder, n, seed=seed)
        if REAL_SAMPLES.is_dir():
            for sample in sorted(REAL_SAMPLES.glob("*.tif")):
                shutil.copy(sample, folder / f"real_{sample.name}")
        broken = folder / "broken"
        broken.mkdir()
        first_jpeg = next(folder.rglob("*.jpg"))
        data = first_jpeg.read_bytes()
        (broken / "truncated.jpg").write_bytes(data[: len(data) // 2])
        (broken / "empty.tif").write_bytes(b"")
        (broken / "notes.docx").write_bytes(b"PK\x03\x04 not an image")
        marker.touch()
    return folder


# The fast recipe: semspark's compact CNN at 64 px with the default schedule (warm-up, cosine
# decay), label smoothing, balanced class weights and weight decay (train/recipe.py); two ranks of
# 16 images at 1e-3 each, a step of 32 images at 2e-3 in all; refitted on training + validation,
# as every run is by default (2.8 minutes of training in all here, 1.3 without the refit).
DEMO_TRAINING = TrainRequest(arch="compact_cnn", epochs=25, batch_size=16, learning_rate=1e-3, num_proc=2,
                             name="demo")


def run_demo(config: Config, n: int = 600, seed: int = 0, train: bool = True) -> int:
    home = semspark_home()
    raw = prepare_demo_input(home / "demo" / "raw", n, seed)
    print(f"demo input: {raw} ({n} synthetic images, real samples, 3 broken files)")
    db = config.catalog.database
    with session_scope(config, app_name="semspark-demo", extra=console_progress()) as spark:
        summary = run_ingest(spark, config, str(raw), labels="folders")
        print("\n".join(summary.lines()))
        again = run_ingest(spark, config, str(raw), labels="folders")
        print(f"\nsecond ingest of the same folder: {again.new_images} new images, "
              f"{again.already_known} of {again.listed} files already ingested")
        queries = [
            ("images per scale bin", f"SELECT scale_bin, count(*) AS images FROM {db}.images "
                                     "GROUP BY scale_bin ORDER BY images DESC"),
            ("images per category in the paper's 1um-2um subset",
             f"SELECT l.label, count(*) AS images FROM {db}.images i JOIN {db}.current_labels l USING (image_id) "
             "WHERE scale_bin IN ('1um', '2um') GROUP BY l.label ORDER BY l.label"),
            ("where the scale came from", f"SELECT scale_source, count(*) AS images, "
                                          f"sum(CAST(scale_mismatch AS INT)) AS tag_disagrees_with_bar "
                                          f"FROM {db}.images GROUP BY scale_source ORDER BY images DESC"),
            ("quarantine", f"SELECT regexp_extract(path, '[^/]+$', 0) AS file, stage, reason "
                           f"FROM {db}.quarantine ORDER BY file"),
        ]
        for title, query in queries:
            columns, rows, _ = run_sql(spark, query)
            print(f"\n{title}:\n  semspark sql \"{query}\"")
            print(format_result(columns, rows, "table"))
        print("\n" + _accuracy(spark, db, raw))
        if train:
            refit = (", then again on training + validation with the first model's calibration"
                     if DEMO_TRAINING.resolved_refit else "")
            print(f"\ntraining {DEMO_TRAINING.arch} at {DEMO_TRAINING.resolved_input_size} px with "
                  f"{DEMO_TRAINING.num_proc} Horovod ranks for {DEMO_TRAINING.epochs} epochs{refit} "
                  "(chance is 0.10 for ten categories):")
            result = run_training(spark, config, DEMO_TRAINING)
            print("\n".join(result.lines()))
            query = (f"SELECT model_version, arch, mode, train_images, best_epoch, "
                     f"round(test_accuracy, 3) AS test_accuracy FROM {db}.models ORDER BY trained_at")
            columns, rows, _ = run_sql(spark, query)
            print(f"\nmodels:\n  semspark sql \"{query}\"")
            print(format_result(columns, rows, "table"))
            _nightly(spark, config, home, result.model_version, n=max(10, n // 15), seed=seed + 1)
            print(f"\nthe paper's unsupervised study on the 1um-2um images (Section 3):\n"
                  f"  semspark analyze --model {result.model_version}")
            summary = run_analysis(spark, config, AnalysisRequest(model=result.model_version))
            print("\n".join(summary.lines()))
    return 0


def _nightly(spark, config: Config, home: Path, model_version: str, n: int, seed: int) -> None:
    db = config.catalog.database
    print(f"\n  semspark promote --model {model_version}")
    promote(spark, config, model_version)
    night = home / "demo" / "night"
    marker = night / f".generated-n{n}-seed{seed}"
    if not marker.exists():
        shutil.rmtree(night, ignore_errors=True)
        generate(night, n, seed=seed)
        marker.touch()
    print(f"\na night's new images ({n}) in {night}; the nightly job ingests them and scores every image "
          f"the production model has not scored yet:\n  semspark nightly --input {night} --labels folders")
    print("\n".join(run_nightly(spark, config, str(night), labels="folders").lines()))
    again = run_nightly(spark, config, str(night), labels="folders")
    print(f"\nthe same nightly again: {again.record['new_images']} new images, {again.record['scored']} scored")
    queries = [
        ("nightly runs", f"SELECT run_id, status, new_images, quarantined, model_version, scored FROM {db}.runs "
                         "ORDER BY started_at"),
        ("predicted categories per scale bin (production model)",
         f"SELECT scale_bin, category, count(*) AS images FROM {db}.latest_predictions "
         "WHERE scale_bin IN ('1um', '2um') GROUP BY scale_bin, category ORDER BY scale_bin, images DESC"),
        ("agreement of the production model with the labels (training images included), per category",
         f"SELECT label, count(*) AS images, round(avg(CAST(category = label AS INT)), 2) AS agreement "
         f"FROM {db}.latest_predictions WHERE label IS NOT NULL GROUP BY label ORDER BY label"),
        ("least confident predictions (to review; uncertain: below the confidence at which validation "
         "images were 99% right; unlike_training: out of distribution)",
         f"SELECT regexp_extract(path, '[^/]+$', 0) AS file, category, round(confidence, 3) AS confidence, "
         f"uncertain, out_of_distribution AS unlike_training "
         f"FROM {db}.latest_predictions ORDER BY confidence LIMIT 5"),
    ]
    for title, query in queries:
        columns, rows, _ = run_sql(spark, query)
        print(f"\n{title}:\n  semspark sql \"{query}\"")
        print(format_result(columns, rows, "table"))


def _accuracy(spark, db: str, raw: Path) -> str:
    """Scale reader against the generator's manifest (the truth it drew)."""
    truth = {f"{r['category']}/{Path(r['file']).name}": r for r in read_manifest(raw)}
    rows = spark.sql(f"SELECT f.path, i.scale_value, i.scale_unit, i.nm_per_px FROM {db}.files f "
                     f"JOIN {db}.images i ON f.image_id = i.image_id WHERE f.role = 'image'").collect()
    right = total = 0
    for row in rows:
        key = "/".join(row["path"].split("/")[-2:])
        if key not in truth:
            continue
        t = truth[key]
        total += 1
        nm = float(t["nm_per_px"])
        right += (row["scale_value"] == float(t["scale_value"]) and row["scale_unit"] == t["scale_unit"]
                  and row["nm_per_px"] is not None and abs(row["nm_per_px"] - nm) / nm < 0.02)
    return f"scale reader against the synthetic truth ({MANIFEST}): {right}/{total} images right " \
           f"(label value and unit exact, nm per pixel within 2%)"
