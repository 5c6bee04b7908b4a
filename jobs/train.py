"""spark-submit entry point for the train stage.

    spark-submit [spark options] jobs/train.py --arch inception_v3 --mode scratch --num-proc 2 ...

Thin by design: the semspark CLI parses the arguments, loads conf/, builds the session from
Spark's configuration and calls semspark.train.job.run_training (horovod.spark.run inside).
"""
import sys

from semspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
