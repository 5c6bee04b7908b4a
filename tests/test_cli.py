"""The command line and the spark-submit entry point, run for real."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from semspark.catalog import format_result
from semspark.cli import main

from .conftest import REAL_SAMPLES, register_copy

VENV_BIN = Path(sys.executable).parent


def test_format_result_by_hand():
    columns, rows = ["bin", "n"], [("1um", 3), (None, 12)]
    assert format_result(columns, rows, "csv") == "bin,n\n1um,3\n,12"
    assert format_result(columns, rows, "json") == '{"bin": "1um", "n": 3}\n{"bin": null, "n": 12}'
    assert format_result(columns, rows, "table").splitlines() == [
        "+------+----+", "| bin  | n  |", "+------+----+", "| 1um  | 3  |", "| NULL | 12 |", "+------+----+"]


@pytest.mark.spark
def test_sql_command_on_the_catalog(spark, capsys):
    spark.sql("CREATE DATABASE IF NOT EXISTS clitest")
    spark.sql("CREATE TABLE IF NOT EXISTS clitest.t (bin string, n int) USING parquet")
    spark.sql("INSERT OVERWRITE clitest.t VALUES ('1um', 3), ('2um', 5)")
    assert main(["sql", "SELECT bin, n FROM clitest.t ORDER BY bin", "--format", "json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line) for line in out] == [{"bin": "1um", "n": 3}, {"bin": "2um", "n": 5}]
    assert main(["sql", "SELECT sum(n) AS total FROM clitest.t", "--format", "csv"]) == 0
    assert capsys.readouterr().out.strip() == "total\n8"
    assert not spark.sparkContext._jsc.sc().isStopped()  # the command left the running session alone


@pytest.mark.spark
def test_sql_errors_are_one_clear_line(spark, capsys):
    assert main(["sql", "SELECT * FROM clitest.no_such_table"]) == 2
    err = capsys.readouterr().err
    assert "no_such_table" in err and "Traceback" not in err


def test_scale_command_prints_json_lines(capsys):
    assert main(["scale", str(REAL_SAMPLES / "zeiss_auriga_2um_tagged.tif"),
                 str(REAL_SAMPLES / "no_databar_rgb.tif")]) == 0
    first, second = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines())
    assert (first["scale_value"], first["scale_unit"], first["scale_source"], first["nm_per_px"]) == (2.0, "um", "CZ_SEM", 22.33)
    assert second["scale_bin"] == "unknown"


def test_config_errors_name_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  image_sise: 64\n")
    assert main(["--config", str(bad), "scale", str(REAL_SAMPLES / "no_databar_rgb.tif")]) == 2
    assert "ingest.image_sise" in capsys.readouterr().err


@pytest.mark.spark
def test_train_command_says_what_is_missing(spark, capsys):
    spark.sql("CREATE DATABASE IF NOT EXISTS emptycat")
    config = Path(spark.conf.get("spark.local.dir")).parent / "emptycat.yaml"
    config.write_text("catalog:\n  database: emptycat\n")
    code = main(["--config", str(config), "train", "--arch", "alexnet", "--input-size", "75", "--epochs", "1"])
    assert code == 2
    assert "--labels" in capsys.readouterr().err
    assert main(["train", "--mode", "fine_tuning"]) == 2
    assert "--init" in capsys.readouterr().err


def test_scale_command_explains_and_draws(tmp_path, capsys):
    """The paper's lab's layout: a white band at rows ~630-700 of a 1024x768 JPEG with the image
    continuing below it, a green bar with end ticks and its red label above it (the issue's words)."""
    assert main(["scale", str(REAL_SAMPLES / "nffa_tasc_2um.jpg"), "--debug", str(tmp_path)]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    top, bottom = row["band_rows"]
    assert 625 <= top <= 640 and 685 <= bottom <= 700 and bottom < 767   # image rows below the band
    assert row["databar_px"] == 768 - top
    assert row["bar"]["kind"] == "ticks" and row["label_box"][1] + row["label_box"][3] <= row["bar"]["row"]
    assert (row["scale_value"], row["scale_unit"], row["scale_confidence"]) == (2.0, "um", "medium")
    assert row["scale_reason"] == "label and bar, no tag to check them against"
    picture = Path(row["debug_picture"])
    assert picture.parent == tmp_path and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import cv2
    assert cv2.imread(str(picture)).shape[1] == 1024


def _config_file(spark, database: str, dataset: str) -> str:
    path = Path(spark.conf.get("spark.local.dir")).parent / f"{database}.yaml"
    path.write_text(f"catalog:\n  database: {database}\ningest:\n  image_size: 64\n  dataset_dir: datasets/{dataset}\n")
    return str(path)


@pytest.mark.spark
def test_a_night_of_mostly_bad_files_exits_3_with_a_json_summary(spark, tmp_path, capsys, caplog):
    """Three files that are not images and one real SEM file: 3 of 4 quarantined is over the
    default gate (half), so the run's data is kept and the command exits 3 for the scheduler."""
    import shutil

    night = tmp_path / "night"
    night.mkdir()
    (night / "broken.tif").write_bytes(b"II*\x00garbage")
    (night / "empty.png").write_bytes(b"")
    (night / "notes.jpg").write_text("not a picture")
    shutil.copy(REAL_SAMPLES / "zeiss_auriga_2um_tagged.tif", night / "good.tif")
    config = _config_file(spark, "gated", "gated")
    with caplog.at_level(logging.INFO, logger="semspark"):
        assert main(["--config", config, "ingest", "--input", str(night), "--json"]) == 3
    captured = capsys.readouterr()
    # progress a log can hold: each phase with its count and rate, and the same phases in the summary
    progress = [r.getMessage() for r in caplog.records if r.name == "semspark.ingest.job"]
    assert any(m.startswith("processed 4 files (") and "files/s)" in m for m in progress), progress
    summary = json.loads(captured.out)
    assert (summary["new_images"], sum(summary["quarantined"].values()), summary["exit_code"]) == (1, 3, 3)
    assert summary["new_by_scale_bin"] == {"2um": 1}           # the file's printed label (manifest)
    assert "3 of 4 new files quarantined" in summary["quality_gate"][0]
    assert set(summary["phase_seconds"]) == {"preparing", "listing", "comparing", "processing", "dataset", "tables",
                                             "files"}
    assert all(seconds >= 0 for seconds in summary["phase_seconds"].values())
    assert "quality gate" in captured.err
    # a rerun has nothing new to judge: it passes, and prints lines without --json
    assert main(["--config", config, "ingest", "--input", str(night)]) == 0
    assert "already ingested:       4" in capsys.readouterr().out
    # the quarantine as the operator sees it, and a retry of a stage that is not there
    assert main(["--config", config, "quarantine", "list", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert sorted((r["path"].rsplit("/", 1)[-1], r["stage"], r["retryable"]) for r in rows) == [
        ("broken.tif", "decode", False), ("empty.png", "read", False), ("notes.jpg", "decode", False)]
    assert main(["--config", config, "quarantine", "retry", "--stage", "io"]) == 2
    assert "the stages there are decode, read" in capsys.readouterr().err
    assert main(["--config", config, "quarantine", "retry", "--stage", "read"]) == 0
    assert "1 quarantined files (read) marked" in capsys.readouterr().out


@pytest.mark.spark
def test_scale_bins_and_models_that_do_not_exist_are_named(spark, scoring, capsys):
    """'all' means every bin for infer and train as for analyze; a bin or a model that is not there
    is an error (exit 2) that lists what is, never an empty selection."""
    config = _config_file(spark, "scoring", "scoring")
    read_bins = {r.scale_bin for r in scoring.records}       # the generator's truth of these images
    assert main(["--config", config, "infer", "--model", "scorer/latest", "--scale-bins", "3um"]) == 2
    err = capsys.readouterr().err
    assert "no image in scale bin 3um" in err and all(b in err for b in read_bins)
    assert main(["--config", config, "train", "--scale-bins", "3um,1um", "--epochs", "1"]) == 2
    assert "no image in scale bin 3um" in capsys.readouterr().err
    assert main(["--config", config, "infer", "--model", "nosuch/1"]) == 2
    err = capsys.readouterr().err
    assert "no model named 'nosuch'" in err and "scorer" in err
    copy = register_copy(scoring.model.path, "scorer-cli")     # the scores of scorer/1 stay as they are
    code = main(["--config", config, "infer", "--model", copy, "--scale-bins", "all", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == summary["exit_code"] == 0 and summary["quality_gate"] == []
    assert summary["candidates"] == summary["scored"] == spark.table("scoring.images").count()


def test_exit_codes_by_cause(capsys):
    from semspark.cli import _explain
    from semspark.errors import EXIT_RETRY, EXIT_USAGE
    from semspark.infer.job import InferError, InferRunFailed
    from semspark.nightly import NightlyError, NightlyRunFailed
    from semspark.train.job import TrainError, TrainRunFailed

    for failed in (TrainRunFailed("rank 1 died"), InferRunFailed("executor lost"), NightlyRunFailed("ingest failed"),
                   RuntimeError("Failed to start database 'metastore_db'")):
        assert _explain(failed)[1] == EXIT_RETRY, failed
    for wrong in (TrainError("no labels"), InferError("no production model"), NightlyError("no such input")):
        assert _explain(wrong)[1] == EXIT_USAGE, wrong
    assert _explain(ZeroDivisionError()) is None                 # a bug keeps its traceback
    assert main(["promote", "scorer/1", "--model", "scorer/2"]) == 2
    assert "two models given" in capsys.readouterr().err
    assert main(["promote"]) == 2 and "--model" in capsys.readouterr().err


def test_spark_progress_bars_only_on_a_terminal(monkeypatch):
    """The commands, the demo and the catalog export ask for Spark's redrawn progress bars when
    their stderr is a terminal (a pseudo-terminal here) and not when it is a file or a pipe."""
    import io
    import os

    from semspark.session import console_progress

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert console_progress() == {"spark.ui.showConsoleProgress": "false"}
    primary, secondary = os.openpty()
    try:
        with os.fdopen(secondary, "w") as terminal:
            monkeypatch.setattr(sys, "stderr", terminal)
            assert console_progress() == {"spark.ui.showConsoleProgress": "true"}
    finally:
        os.close(primary)


def test_spark_workers_import_the_drivers_semspark_whatever_the_working_folder(spark):
    """Spark starts its Python workers with `python -m`, which would put their working folder (the
    driver's, in local mode) first on their path: a night started from a folder holding another
    semspark/ then ran the driver's code with that folder's in its tasks (seen in night_bench's
    --against arm). The workers run with Python's safe path instead."""
    import os

    import semspark

    def probe(_):
        import semspark as worker_semspark
        return sys.flags.safe_path, os.getcwd(), sys.path[0], worker_semspark.__file__

    safe_path, folder, first, module = spark.sparkContext.parallelize([0], 1).map(probe).first()
    assert safe_path and first != folder
    assert module == semspark.__file__


def test_the_validation_fraction_reaches_the_split():
    """--validation-fraction is the share of labelled images the split holds out for validation (the
    images the temperature and the uncertain threshold are fitted on): 0.2 of 500 is about 100. Its
    default follows the refit's: 0.2 when the model is refitted on training + validation (the default),
    0.1 when it is not (asked, or validation stops the run or chooses its epoch)."""
    import numpy as np

    from semspark.cli import _parser, train_request
    from semspark.train.job import TrainError
    from semspark.train.split import split_images

    def request_of(*flags):
        request = train_request(_parser().parse_args(["train", *flags]))
        request.check()
        return request

    # the default: refitted on training + validation, with 0.2 of the images held out for validation
    assert (request_of().resolved_refit, request_of().resolved_validation) == (True, 0.2)
    assert (request_of("--no-refit-with-validation").resolved_validation, request_of("--patience", "3").resolved_validation,
            request_of("--keep", "best").resolved_validation) == (0.1, 0.1, 0.1)
    assert not request_of("--schedule", "constant").resolved_refit       # its epoch is chosen on validation
    request = request_of("--validation-fraction", "0.3", "--no-refit-with-validation")
    assert (request.resolved_validation, request.resolved_refit) == (0.3, False)
    # EfficientNetV2-S and Inception-v4 (their refit missed the ECE target), ConvNeXt-Tiny and
    # Inception-ResNet-v2 (not measured refitted) are not refitted unless asked (README, Train)
    for arch in ("efficientnetv2_s", "convnext_tiny", "inception_resnet_v2", "inception_v4"):
        request = request_of("--arch", arch)
        assert (request.resolved_refit, request.resolved_validation) == (False, 0.1), arch
    efficientnet = request_of("--arch", "efficientnetv2_s", "--refit-with-validation")
    assert (efficientnet.resolved_refit, efficientnet.resolved_validation) == (True, 0.2)
    assert request_of("--refit-with-validation", "--validation-fraction", "0.15").resolved_validation == 0.15
    with pytest.raises(TrainError, match="drop --refit-with-validation"):
        request_of("--refit-with-validation", "--patience", "3")
    with pytest.raises(TrainError, match="or 0 for the default"):
        request_of("--validation-fraction", "0.5")
    request = request_of("--validation-fraction", "0.2")
    rng = np.random.default_rng(0)
    ids = [f"{i:064x}" for i in range(500)]
    labels = [f"category{i % 5}" for i in range(500)]
    phashes = [int(h) for h in rng.integers(0, 2 ** 62, 500)]   # far apart: no near-duplicate groups
    for fraction, expected in ((0.1, 50), (0.2, 100)):
        split = split_images(ids, labels, phashes, seed=0, validation=fraction, test=request.test)
        assert abs(list(split.side.values()).count("validation") - expected) <= 5
