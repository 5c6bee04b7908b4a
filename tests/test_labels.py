"""One label source (sem.labels): ingest records the folders' labels, a CSV corrects and removes
labels without touching pixels, reruns add nothing, and the next training reads the corrected
labels. The expected labels come from the generator's manifest, and the corrections from this file."""
from __future__ import annotations

import csv
import hashlib
import json
import time

import pytest

from semspark.config import CatalogConfig, Config, IngestConfig
from semspark.dataset import dataset_url
from semspark.ingest.job import run_ingest
from semspark.labels import LabelError, ensure_labels, label_from_csv, label_one
from semspark.synth.generate import generate
from semspark import registry
from semspark.train.data import labelled_images, read_shard
from semspark.train.job import TrainRequest, run_training

pytestmark = pytest.mark.spark

DB = "labelling"
CONFIG = Config(catalog=CatalogConfig(database=DB),
                ingest=IngestConfig(image_size=64, dataset_dir="datasets/labelling", files_per_task=16))


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ingested(spark, tmp_path_factory):
    folder = tmp_path_factory.mktemp("labelling_raw")
    records = generate(folder, 40, seed=41, width=256, height=192)
    run_ingest(spark, CONFIG, str(folder), labels="folders")
    truth = {sha(folder / r.file): r.category for r in records}
    return folder, records, truth


def current(spark) -> dict[str, str]:
    return {r["image_id"]: r["label"] for r in spark.table(f"{DB}.current_labels").collect()}


def write_csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def corrected(spark, ingested, tmp_path_factory):
    """One image relabelled by its path, one by its id, one label removed (an empty cell)."""
    folder, records, truth = ingested
    moved, renamed, removed = records[0], records[1], records[2]
    new_for_moved = next(r.category for r in records if r.category != moved.category)
    new_for_renamed = next(r.category for r in records if r.category not in (renamed.category, new_for_moved))
    table = write_csv(tmp_path_factory.mktemp("labels") / "corrections.csv", ["path", "image_id", "label"], [
        [str(folder / moved.file), "", new_for_moved],
        ["", sha(folder / renamed.file).upper(), new_for_renamed],   # ids in any case
        [str(folder / removed.file), "", ""],
    ])
    summary = label_from_csv(spark, DB, table, labelled_by="curator")
    expected = dict(truth)
    expected[sha(folder / moved.file)] = new_for_moved
    expected[sha(folder / renamed.file)] = new_for_renamed
    del expected[sha(folder / removed.file)]
    return table, summary, expected


def test_ingest_records_each_folder_label_once(spark, ingested):
    _, _, truth = ingested
    rows = spark.table(f"{DB}.labels").collect()
    assert len(rows) == len(truth) == 40
    assert {r["image_id"]: r["label"] for r in rows} == truth
    assert {r["source"] for r in rows} == {"folders"}


def test_a_csv_corrects_and_removes_labels_and_a_rerun_adds_nothing(spark, corrected):
    table, summary, expected = corrected
    assert (summary.rows, summary.changed, summary.unchanged, summary.removed) == (3, 3, 0, 1)
    assert current(spark) == expected
    history = spark.table(f"{DB}.labels").filter("source = 'csv'").collect()
    assert len(history) == 3 and {r["labelled_by"] for r in history} == {"curator"}
    again = label_from_csv(spark, DB, table, labelled_by="curator")
    assert (again.changed, again.unchanged) == (0, 3)
    assert spark.table(f"{DB}.labels").count() == 43


def test_bad_label_files_write_nothing_and_say_why(spark, ingested, corrected, tmp_path):
    folder, records, _ = ingested
    before = spark.table(f"{DB}.labels").count()
    unknown = write_csv(tmp_path / "unknown.csv", ["path", "label"],
                        [[str(folder / records[5].file), "Fibres"], [str(folder / "not-ingested.tif"), "Fibres"]])
    with pytest.raises(LabelError, match="1 rows .* name no ingested image .*not-ingested.tif"):
        label_from_csv(spark, DB, unknown)
    twice = write_csv(tmp_path / "twice.csv", ["path", "label"],
                      [[str(folder / records[5].file), "Fibres"], [str(folder / records[5].file), "Films"]])
    with pytest.raises(LabelError, match="different labels to the same image"):
        label_from_csv(spark, DB, twice)
    with pytest.raises(LabelError, match="needs a header"):
        label_from_csv(spark, DB, write_csv(tmp_path / "header.csv", ["file", "category"], [["a", "b"]]))
    with pytest.raises(LabelError, match="no image"):
        label_one(spark, DB, "0" * 64, "Fibres")
    assert spark.table(f"{DB}.labels").count() == before


def test_a_person_corrects_one_image_and_the_pixels_stay_as_they_are(spark, ingested, corrected):
    from pathlib import Path

    folder, records, _ = ingested
    dataset = Path(dataset_url(CONFIG)[len("file://"):])
    stamps = sorted((str(f), f.stat().st_mtime_ns) for f in dataset.rglob("*"))
    image_id = sha(folder / records[7].file)
    other = next(r.category for r in records if r.category != records[7].category)
    summary = label_one(spark, DB, image_id, other, labelled_by="a person")
    assert summary.changed == 1 and current(spark)[image_id] == other
    latest = spark.table(f"{DB}.labels").filter(f"image_id = '{image_id}'").orderBy("labelled_at").collect()[-1]
    assert (latest["source"], latest["labelled_by"]) == ("person", "a person")
    assert sorted((str(f), f.stat().st_mtime_ns) for f in dataset.rglob("*")) == stamps


@pytest.mark.parametrize("current_label, current_source, label, adds", [
    ("Fibres", "folders", "Fibres", True),    # confirms a folder's label: reviewed
    ("Fibres", "csv", "Fibres", True),
    ("Fibres", "person", "Fibres", False),    # a person's label again
    ("Fibres", "person", "Tips", True),       # a correction
    ("Fibres", "folders", None, True),        # a removal
    (None, None, None, False),                # removing what is not there
    (None, None, "Tips", True),               # a first label
])
def test_which_persons_labels_are_appended_by_hand(current_label, current_source, label, adds):
    from semspark.labels import person_label_adds

    assert person_label_adds(current_label, current_source, label) is adds


def test_a_person_confirming_a_folders_label_is_recorded_once(spark, ingested, corrected):
    """The folder's own label given by a person: no label changes, but the image's current label is now
    a person's (the web app's review queues drop it); given again, nothing is appended."""
    folder, records, _ = ingested
    image_id = sha(folder / records[4].file)
    assert spark.sql(f"SELECT source FROM {DB}.current_labels WHERE image_id = '{image_id}'").first()["source"] == "folders"
    before = spark.table(f"{DB}.labels").count()
    summary = label_one(spark, DB, image_id, records[4].category, labelled_by="a reviewer")
    assert (summary.changed, summary.unchanged, summary.confirmed) == (0, 1, 1)
    spark.catalog.refreshTable(f"{DB}.labels")
    row = spark.sql(f"SELECT label, source, labelled_by FROM {DB}.current_labels WHERE image_id = '{image_id}'").first()
    assert (row["label"], row["source"], row["labelled_by"]) == (records[4].category, "person", "a reviewer")
    again = label_one(spark, DB, image_id, records[4].category)
    assert (again.changed, again.unchanged, again.confirmed) == (0, 1, 0)
    spark.catalog.refreshTable(f"{DB}.labels")
    assert spark.table(f"{DB}.labels").count() == before + 1


def test_two_people_labelling_one_image_at_once_append_one_row(spark, ingested, corrected, caplog):
    """While one writer holds the lock (a person's label coming in through the web app), another
    person's identical label waits, then reads the label the first one appended: one row, not two."""
    import threading

    from semspark.catalog import append_rows, utc_now
    from semspark.schema import LABELS
    from semspark.storage import writer_lock

    folder, records, _ = ingested
    image_id = sha(folder / records[11].file)
    other = next(r.category for r in records if r.category != records[11].category)
    answers = []
    with writer_lock(purpose="the first person"):
        second = threading.Thread(target=lambda: answers.append(label_one(spark, DB, image_id, other, "second")))
        second.start()
        deadline = time.monotonic() + 120
        while not any("held by another thread" in r.getMessage() for r in caplog.records):
            assert second.is_alive() and time.monotonic() < deadline, "label_one did not wait for the lock"
            time.sleep(0.1)
        append_rows(spark, DB, LABELS, [{"image_id": image_id, "label": other, "source": "person",
                                         "labelled_by": "first", "labelled_at": utc_now(), "label_run": "race"}])
    second.join(120)
    assert (answers[0].changed, answers[0].unchanged, answers[0].confirmed) == (0, 1, 0)
    spark.catalog.refreshTable(f"{DB}.labels")
    rows = spark.sql(f"SELECT labelled_by FROM {DB}.labels WHERE image_id = '{image_id}' AND source = 'person'").collect()
    assert [r["labelled_by"] for r in rows] == ["first"]


def test_a_csv_compares_with_the_labels_before_the_lock_and_again_if_they_changed_meanwhile(
        spark, ingested, corrected, tmp_path, caplog):
    """A CSV of many labels is compared with the history before its writer takes the lock (a Spark
    job too long to hold the web app's corrections up), then appended under it. Here a person's
    label for one of its images is appended while the CSV's writer waits for the lock, the very
    label the CSV gives: the CSV's rows are compared again and that image gets one row, not two."""
    import logging
    import threading

    from semspark.catalog import append_rows, utc_now
    from semspark.schema import LABELS
    from semspark.storage import writer_lock

    caplog.set_level(logging.INFO, logger="semspark.labels")
    folder, records, _ = ingested
    chosen = records[13:17]
    relabel = {sha(folder / r.file): next(r2.category for r2 in records if r2.category != r.category) for r in chosen}
    raced = sha(folder / chosen[0].file)
    table = write_csv(tmp_path / "four.csv", ["image_id", "label"], sorted(relabel.items()))
    answers = []
    with writer_lock(purpose="a person's correction"):
        csv_writer = threading.Thread(target=lambda: answers.append(label_from_csv(spark, DB, table, "csv-writer")))
        csv_writer.start()
        deadline = time.monotonic() + 180
        while not any("held by another thread" in r.getMessage() for r in caplog.records):
            assert csv_writer.is_alive() and time.monotonic() < deadline, "label_from_csv did not wait for the lock"
            time.sleep(0.1)
        append_rows(spark, DB, LABELS, [{"image_id": raced, "label": relabel[raced], "source": "person",
                                         "labelled_by": "person", "labelled_at": utc_now(), "label_run": "race-csv"}])
    csv_writer.join(180)
    assert (answers[0].rows, answers[0].changed, answers[0].unchanged) == (4, 3, 1)
    spark.catalog.refreshTable(f"{DB}.labels")
    rows = spark.sql(f"SELECT image_id, labelled_by FROM {DB}.labels WHERE label_run IN ('race-csv', '{answers[0].run_id}')").collect()
    assert sorted((r["image_id"], r["labelled_by"]) for r in rows) == sorted(
        [(raced, "person")] + [(i, "csv-writer") for i in relabel if i != raced])
    assert {i: current(spark)[i] for i in relabel} == relabel
    # compared before the lock was free (else the person's row would have been in the first reading)
    assert any("changed while labels from csv" in r.getMessage() for r in caplog.records)


def test_the_label_command_with_its_exit_codes_and_json(spark, ingested, corrected, tmp_path, capsys):
    from semspark.cli import main

    folder, records, _ = ingested
    image_id = sha(folder / records[9].file)
    table = write_csv(tmp_path / "one.csv", ["image_id", "label"], [[image_id, records[9].category]])
    conf = tmp_path / "labelling.yaml"
    conf.write_text(f"catalog:\n  database: {DB}\n")
    assert main(["--config", str(conf), "label", "--csv", table, "--who", "cli", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (printed["rows"], printed["changed"], printed["unchanged"], printed["exit_code"]) == (1, 0, 1, 0)
    assert main(["--config", str(conf), "label", "--image-id", "f" * 64, "--label", "Fibres"]) == 2
    assert "no image" in capsys.readouterr().err
    assert main(["--config", str(conf), "label", "--image-id", image_id]) == 2          # a label is needed
    assert main(["--config", str(conf), "label"]) == 2


def test_the_next_training_reads_the_corrected_labels(spark, ingested, corrected):
    images = labelled_images(spark, DB)
    assert dict(zip(images.image_ids, images.labels)) == current(spark)
    # what a rank reads: pixels from the Petastorm rows, the label index from sem.labels
    label_of = images.label_of()
    read = {image_id: label for _, label, image_id in read_shard(dataset_url(CONFIG), label_of, 0, 1)}
    assert {i: images.class_names[k] for i, k in read.items()} == dict(zip(images.image_ids, images.labels))

    result = run_training(spark, CONFIG, TrainRequest(arch="compact_cnn", epochs=1, batch_size=8, num_proc=1,
                                                      name="relabelled", patience=100))
    split = json.loads((registry.run_dir(result.run_id) / "split.json").read_text())
    held = split["train"] + split["validation"] + split["test"]
    assert {i: split["labels"][i] for i in held} == {i: label for i, label in current(spark).items()}
    counts = {}
    for image_id in split["train"]:
        counts[current(spark)[image_id]] = counts.get(current(spark)[image_id], 0) + 1
    assert {k: v for k, v in split["train_class_counts"].items() if v} == counts


def test_an_older_catalog_starts_its_history_from_the_ingested_labels(spark, ingested):
    _, _, truth = ingested
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {DB}_old")
    spark.sql(f"CREATE TABLE {DB}_old.images USING parquet AS SELECT * FROM {DB}.images")
    ensure_labels(spark, f"{DB}_old")
    rows = spark.table(f"{DB}_old.labels").collect()
    assert {r["image_id"]: r["label"] for r in rows} == truth     # the labels the files were ingested with
    assert {r["source"] for r in rows} == {"folders"} and {r["labelled_by"] for r in rows} == {"migration"}


@pytest.mark.spark
def test_a_view_is_replaced_only_when_its_definition_changes(spark):
    """Every command asks for its views; the metastore's own record (its DDL time) shows whether one
    was written again."""
    import time

    from semspark.catalog import ensure_view

    spark.sql("CREATE DATABASE IF NOT EXISTS viewcheck")
    spark.sql("CREATE TABLE IF NOT EXISTS viewcheck.t (a int) USING parquet")

    def stored():
        rows = {r[0]: r[1] for r in spark.sql("DESCRIBE TABLE EXTENDED viewcheck.w").collect()}
        return rows["View Text"], rows["Comment"], rows["Table Properties"]

    ensure_view(spark, "viewcheck.w", "the lab's view", "SELECT a\n  FROM viewcheck.t WHERE a > 1")
    first = stored()
    assert first[:2] == ("SELECT a\n  FROM viewcheck.t WHERE a > 1", "the lab's view")
    time.sleep(1.1)   # the DDL time counts seconds
    ensure_view(spark, "viewcheck.w", "the lab's view", "SELECT a FROM viewcheck.t\n WHERE a > 1")   # same, spaced
    assert stored() == first
    ensure_view(spark, "viewcheck.w", "the lab's view", "SELECT a FROM viewcheck.t WHERE a > 2")
    changed = stored()
    assert changed[0] == "SELECT a FROM viewcheck.t WHERE a > 2" and changed[2] != first[2]


@pytest.mark.parametrize("given_as", ["rows_in_the_driver", "dataframe"])
def test_only_changes_of_the_current_label_are_appended(spark, given_as):
    """A history written here by hand, and labels proposed for five images; which rows are appended
    and what the images' labels are after, worked out by hand from the rules (the latest row is the
    current label, ties broken by the later run; an empty label removes). The same for the rows a
    night's ingest holds in its driver (read and appended with pyarrow) as for a DataFrame (Spark)."""
    import datetime

    from semspark.catalog import insert
    from semspark.labels import append_changes
    from semspark.schema import LABELS

    database = f"label_rules_{given_as}"
    ensure_labels(spark, database)
    t1, t2, now = datetime.datetime(2026, 1, 1), datetime.datetime(2026, 2, 1), datetime.datetime(2026, 3, 1)
    history = [("a", "Fibres", t1, "r1"), ("a", "Tips", t2, "r2"),          # a: Tips
               ("b", "Fibres", t1, "r1"), ("b", None, t2, "r2"),            # b: removed
               ("c", "Nanowires", t1, "r2"), ("c", "Tips", t1, "r1"),       # c: same time, later run: Nanowires
               ("e", "Tips", t1, "r1")]                                     # e: Tips; d: never labelled
    insert(spark.createDataFrame([(i, label, "csv", "someone", at, run) for i, label, at, run in history],
                                 "image_id string, label string, source string, labelled_by string, "
                                 "labelled_at timestamp, label_run string"), database, LABELS)
    proposed = [("a", "Tips"), ("b", "Fibres"), ("c", "Nanowires"), ("d", "Tips"), ("e", None)]
    if given_as == "dataframe":
        proposed = spark.createDataFrame(proposed, "image_id string, label string")
    result = append_changes(spark, database, proposed, "folders", "ingest", "r3", at=now)
    assert result == {"changed": 3, "unchanged": 2, "removed": 1, "by_label": {"Fibres": 1, "Tips": 1}}
    appended = spark.sql(f"SELECT image_id, label, source, labelled_by, labelled_at, label_run "
                         f"FROM {database}.labels WHERE label_run = 'r3'").collect()
    assert sorted(tuple(r) for r in appended) == [("b", "Fibres", "folders", "ingest", now, "r3"),
                                                  ("d", "Tips", "folders", "ingest", now, "r3"),
                                                  ("e", None, "folders", "ingest", now, "r3")]
    current = {r["image_id"]: r["label"] for r in spark.table(f"{database}.current_labels").collect()}
    assert current == {"a": "Tips", "b": "Fibres", "c": "Nanowires", "d": "Tips"}
