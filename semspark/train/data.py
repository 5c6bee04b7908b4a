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

    def label_of(self, image_ids=None) -> dict[str, int]:
        """image_id -> class index (in ``class_names``) of ``image_ids`` (default: every image)."""
        index = {name: i for i, name in enumerate(self.class_names)}
        chosen = None if image_ids is None else set(image_ids)
        return {i: index[label] for i, label in zip(self.image_ids, self.labels) if chosen is None or i in chosen}


def labelled_images(spark, database: str, scale_bins: list[str] | None = None) -> LabelledImages:
    """Every image with a current label in sem.labels (optionally only some scale bins), metadata
    only: the labels are the current ones, not those the images were ingested with."""
    from pyspark.sql import functions as F

    from semspark.catalog import ensure_tables
    from semspark.labels import current_labels, ensure_labels
    from semspark.schema import INGEST_TABLES

    ensure_tables(spark, database, INGEST_TABLES)  # a catalog from an older semspark gains phash
    ensure_labels(spark, database)
    rows = spark.table(qualified(database, IMAGES)).select("image_id", "phash", "scale_bin")
    if scale_bins:
        rows = rows.filter(F.col("scale_bin").isin(scale_bins))
    rows = (rows.join(current_labels(spark, database), "image_id")
            .select("image_id", "label", "phash").orderBy("image_id").collect())
    return LabelledImages(image_ids=[r["image_id"] for r in rows], labels=[r["label"] for r in rows],
                          phashes=[int(r["phash"], 16) if r["phash"] else None for r in rows])


def make_split(images: LabelledImages, seed: int, validation: float = 0.1, test: float = 0.2) -> Split:
    return split_images(images.image_ids, images.labels, images.phashes, seed=seed,
                        validation=validation, test=test)


def read_shard(dataset_url: str, label_of: dict[str, int], rank: int, ranks: int, num_epochs: int | None = 1):
    """Rows (image, label index, image_id) of this rank's shard, for the images of ``label_of``
    (image_id -> class index, from sem.labels as the driver read it; the label stored in the
    Petastorm row is the one the image was ingested with and is not read)."""
    from petastorm import make_reader
    from petastorm.predicates import in_set

    with make_reader(dataset_url, schema_fields=["image_id", "image"], num_epochs=num_epochs,
                     predicate=in_set(set(label_of), "image_id"), cur_shard=rank, shard_count=ranks,
                     reader_pool_type=READER_POOL, shuffle_row_groups=False) as reader:
        for row in reader:
            yield row.image, label_of[row.image_id], row.image_id


def tf_dataset(dataset_url: str, label_of: dict[str, int], image_size: int,
               input_size: int, batch_size: int, rank: int = 0, ranks: int = 1, repeat: bool = False,
               shuffle_buffer: int = 0, seed: int = 0):
    """A tf.data pipeline of (image (S, S, 1) float32 0..255, label index) batches for one rank,
    over the images of ``label_of`` (image_id -> class index)."""
    import tensorflow as tf

    def rows():
        yield from ((image, label) for image, label, _ in
                    read_shard(dataset_url, label_of, rank, ranks, num_epochs=None if repeat else 1))

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
