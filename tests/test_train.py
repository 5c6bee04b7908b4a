"""The train stage for real: Horovod on Spark with two Gloo ranks over the ingested Petastorm
dataset, a model that learns the synthetic categories, and what it leaves behind. (Resuming a run
whose rank was killed: tests/test_cluster.py.)"""
from __future__ import annotations

import dataclasses
import json

import pytest

from semspark.config import CatalogConfig, Config, IngestConfig
from semspark.ingest.job import run_ingest
from semspark.synth.generate import generate
from semspark.train import registry
from semspark.train.job import TrainError, TrainRequest, run_training

pytestmark = pytest.mark.spark

CONFIG = Config(catalog=CatalogConfig(database="training"),
                ingest=IngestConfig(image_size=96, dataset_dir="datasets/training", files_per_task=64))
FAST = TrainRequest(arch="alexnet", input_size=75, batch_size=16, num_proc=2, optimizer="adam",
                    learning_rate=1e-4, patience=100, warmup_epochs=1)
CHANCE = 0.1


@pytest.fixture(scope="module")
def catalog(spark, tmp_path_factory):
    folder = tmp_path_factory.mktemp("training_raw")
    generate(folder, 600, seed=5, width=384, height=288)
    run_ingest(spark, CONFIG, str(folder), labels="folders")
    return folder


def test_requests_are_checked_before_anything_runs():
    for bad, words in [(dict(arch="vgg"), "--arch"), (dict(mode="fine_tuning"), "--init"),
                       (dict(input_size=32), "--input-size"), (dict(epochs=0), "--epochs"),
                       (dict(init="imagenet"), "--init"), (dict(name="a/b"), "model name"),
                       (dict(optimizer="lbfgs"), "--optimizer")]:
        with pytest.raises(TrainError, match=words):
            dataclasses.replace(FAST, **bad).check()


@pytest.fixture(scope="module")
def learned(spark, catalog):
    return run_training(spark, CONFIG, dataclasses.replace(FAST, name="learn", epochs=20))


def backbone_weights(path):
    from semspark.train.models import BACKBONE, load_saved_model
    return [w.numpy() for w in load_saved_model(path).get_layer(BACKBONE).weights]


def test_two_ranks_learn_the_categories_and_register_the_model(spark, learned):
    result = learned
    # Measured here: 0.4 to 0.5 test accuracy after 20 epochs; three times chance is the bar.
    assert result.test_accuracy >= 3 * CHANCE, result.lines()
    assert result.model_version == "learn/1"
    folder = registry.models_root() / "learn" / "1"
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["class_names"] == sorted(metadata["class_names"]) and len(metadata["class_names"]) == 10
    assert metadata["architecture"] == "alexnet" and metadata["num_proc"] == 2
    assert metadata["model_sha256"] == registry.file_sha256(folder / "model.keras")
    assert sum(map(sum, metadata["confusion_matrix"])) == metadata["test_images"]
    assert metadata["test_accuracy"] == pytest.approx(result.test_accuracy)
    split = json.loads((registry.run_dir(result.run_id) / "split.json").read_text())
    assert not set(split["train"]) & set(split["test"]) and not set(split["train"]) & set(split["validation"])
    for figure in ("accuracy.png", "confusion.png"):
        assert (folder / figure).stat().st_size > 10_000
    row = spark.table("training.models").filter("model_version = 'learn/1'").collect()[0]
    assert row["test_accuracy"] == pytest.approx(result.test_accuracy) and row["train_images"] == len(split["train"])
    epochs = spark.table("training.training_history").filter("model_version = 'learn/1'").count()
    assert epochs == 20

    from semspark.train.models import load_saved_model
    model = load_saved_model(folder / "model.keras")
    assert model.get_layer("logits").output.shape[-1] == 10


def test_feature_extraction_from_an_earlier_model_keeps_its_backbone(spark, learned):
    import numpy as np

    result = run_training(spark, CONFIG, dataclasses.replace(
        FAST, name="fe", mode="feature_extraction", init=f"model:{learned.model_version}", epochs=1))
    source = backbone_weights(registry.models_root() / "learn" / "1" / "model.keras")
    target = backbone_weights(registry.models_root() / "fe" / "1" / "model.keras")
    assert len(source) == len(target) > 10
    for a, b in zip(source, target):
        np.testing.assert_array_equal(a, b)
    assert result.model_version == "fe/1"


def test_feature_extraction_then_fine_tuning_moves_the_backbone_in_its_second_phase(spark, learned):
    result = run_training(spark, CONFIG, dataclasses.replace(
        FAST, name="fe-ft", mode="feature_extraction_then_fine_tuning", init=f"model:{learned.model_version}",
        epochs=1, fine_tune_epochs=1, run_id="fe-then-ft"))
    run = registry.run_dir("fe-then-ft")
    assert [h["epoch"] for h in json.loads((run / "state.json").read_text())["history"]] == [1, 2]
    source = backbone_weights(registry.models_root() / "learn" / "1" / "model.keras")
    last = backbone_weights(run / "last.keras")  # after the fine-tuning epoch
    moved = [not (a == b).all() for a, b in zip(source, last)]
    assert sum(moved) > 0.5 * len(moved)
    assert json.loads((registry.models_root() / "fe-ft" / "1" / "metadata.json").read_text())["mode"] == \
        "feature_extraction_then_fine_tuning"
    assert result.model_version == "fe-ft/1"


