"""Training input: labelled images and their split from the catalog, and real Horovod ranks each
reading their own Petastorm shard, together covering the training images exactly once."""
from __future__ import annotations


import pytest

from semspark.config import CatalogConfig, Config, IngestConfig
from semspark.dataset import dataset_url
from semspark.ingest.job import run_ingest
from semspark.synth.generate import generate
from semspark.train.data import labelled_images, make_split, read_shard, tf_dataset
from semspark.train.job import run_ranks

pytestmark = pytest.mark.spark

CONFIG = Config(catalog=CatalogConfig(database="traindata"),
                ingest=IngestConfig(image_size=64, dataset_dir="datasets/traindata", files_per_task=16))


@pytest.fixture(scope="module")
def ingested(spark, tmp_path_factory):
    folder = tmp_path_factory.mktemp("train_raw")
    records = generate(folder, 40, seed=21, width=384, height=288)
    # An unlabelled image at the root: training must not see it.
    (folder / records[0].file).rename(folder / "unlabelled.tif")
    run_ingest(spark, CONFIG, str(folder), labels="folders")
    return folder, records


def test_labelled_images_and_their_split(spark, ingested):
    import hashlib

    folder, _ = ingested
    images = labelled_images(spark, "traindata")
    assert hashlib.sha256((folder / "unlabelled.tif").read_bytes()).hexdigest() not in images.image_ids
    labels = spark.table("traindata.images").filter("label IS NOT NULL").count()
    assert len(images.image_ids) == labels and None not in images.labels
    assert len(images.class_names) == 10
    only_small = labelled_images(spark, "traindata", scale_bins=["1um", "2um"])
    assert set(only_small.image_ids) < set(images.image_ids)
    split = make_split(images, seed=1)
    assert set(split.side) == set(images.image_ids)
    assert {"train", "validation", "test"} == set(split.side.values())


def test_two_horovod_ranks_read_disjoint_shards_covering_the_training_images(spark, ingested):
    images = labelled_images(spark, "traindata")
    split = make_split(images, seed=1)
    train = set(split.ids("train"))
    url = dataset_url(CONFIG)

    def read(url, label_of):
        import horovod.tensorflow as hvd

        hvd.init()
        return sorted(i for _, _, i in read_shard(url, label_of, hvd.rank(), hvd.size()))

    # launched as training launches its ranks (horovod.spark.run's own default forks this process,
    # TensorFlow loaded, to ask whether MPI is built: the child crashed once here)
    shards = run_ranks(spark, read, (url, images.label_of(train)), num_proc=2)
    assert len(shards) == 2 and all(shards)
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == train


def test_tf_dataset_batches_images_and_label_indices(spark, ingested):
    images = labelled_images(spark, "traindata")
    split = make_split(images, seed=1)
    test_ids = set(split.ids("test"))
    data = tf_dataset(dataset_url(CONFIG), images.label_of(test_ids), image_size=64, input_size=75,
                      batch_size=4)
    seen = 0
    for x, y in data:
        assert x.shape[1:] == (75, 75, 1) and x.dtype.name == "float32"
        assert 0 <= int(y.numpy().min()) and int(y.numpy().max()) < 10
        assert float(x.numpy().max()) <= 255.0
        seen += int(x.shape[0])
    assert seen == len(test_ids)
