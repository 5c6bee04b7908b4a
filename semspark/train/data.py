"""What training reads: the labelled images, their split, and per-rank Petastorm shards as tf.data.

The driver only sees image metadata (id, label, perceptual hash: a few tens of bytes a row);
pixels go from the Petastorm dataset straight to each Horovod rank, which reads its own shard of
row groups (``cur_shard`` = rank, ``shard_count`` = ranks).
"""
from __future__ import annotations

from dataclasses import dataclass

from semspark.catalog import qualified
from semspark.schema import IMAGES
from semspark.train.split import Split, split_images

# The reader pool: petastorm 0.13's thread pool sometimes ends a pass early on small datasets
# (seen in the ingest tests); the dummy pool reads in the calling thread and never does. PNG
# decoding of a 299x299 image costs under a millisecond, far below a training step on CPU.
READER_POOL = "dummy"


@dataclass(frozen=True)
class LabelledImages:
    image_ids: list[str]
    labels: list[str]
    phashes: list[int | None]

    @property
    def class_names(self) -> list[str]:
        return sorted(set(self.labels))


def labelled_images(spark, database: str, scale_bins: list[str] | None = None) -> LabelledImages:
    """Every labelled image in sem.images (optionally only some scale bins), metadata only."""
    from pyspark.sql import functions as F

    from semspark.catalog import ensure_tables
    from semspark.schema import INGEST_TABLES

    ensure_tables(spark, database, INGEST_TABLES)  # a catalog from an older semspark gains phash
    rows = spark.table(qualified(database, IMAGES)).filter(F.col("label").isNotNull())
    if scale_bins:
        rows = rows.filter(F.col("scale_bin").isin(scale_bins))
    rows = rows.select("image_id", "label", "phash").orderBy("image_id").collect()
    return LabelledImages(image_ids=[r["image_id"] for r in rows], labels=[r["label"] for r in rows],
                          phashes=[int(r["phash"], 16) if r["phash"] else None for r in rows])


def make_split(images: LabelledImages, seed: int, validation: float = 0.1, test: float = 0.2) -> Split:
    return split_images(images.image_ids, images.labels, images.phashes, seed=seed,
                        validation=validation, test=test)


def read_shard(dataset_url: str, image_ids: set[str], class_names: list[str], rank: int, ranks: int,
               num_epochs: int | None = 1):
    """Rows (image, label index, image_id) of this rank's shard restricted to ``image_ids``."""
    from petastorm import make_reader
    from petastorm.predicates import in_set

    index = {name: i for i, name in enumerate(class_names)}
    with make_reader(dataset_url, schema_fields=["image_id", "label", "image"], num_epochs=num_epochs,
                     predicate=in_set(image_ids, "image_id"), cur_shard=rank, shard_count=ranks,
                     reader_pool_type=READER_POOL, shuffle_row_groups=False) as reader:
        for row in reader:
            yield row.image, index[row.label], row.image_id


def tf_dataset(dataset_url: str, image_ids: set[str], class_names: list[str], image_size: int,
               input_size: int, batch_size: int, rank: int = 0, ranks: int = 1, repeat: bool = False,
               shuffle_buffer: int = 0, seed: int = 0):
    """A tf.data pipeline of (image (S, S, 1) float32 0..255, label) batches for one rank."""
    import tensorflow as tf

    def rows():
        yield from ((image, label) for image, label, _ in
                    read_shard(dataset_url, image_ids, class_names, rank, ranks, num_epochs=None if repeat else 1))

    data = tf.data.Dataset.from_generator(rows, output_signature=(
        tf.TensorSpec((image_size, image_size), tf.uint8), tf.TensorSpec((), tf.int32)))
    if shuffle_buffer:
        data = data.shuffle(shuffle_buffer, seed=seed + rank)

    def prepare(image, label):
        image = tf.cast(image[..., None], tf.float32)
        if input_size != image_size:
            image = tf.image.resize(image, (input_size, input_size), antialias=True)
        return image, label

    return data.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)
