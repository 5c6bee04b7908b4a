"""spark-submit entry point for the infer stage.

    spark-submit [spark options] jobs/infer.py --model NAME/VERSION [--scale-bins 1um,2um]

Thin by design: the semspark CLI parses the arguments, loads conf/, builds the session from
Spark's configuration and calls semspark.infer.job.run_inference (predict_batch_udf inside).
"""
import sys

from semspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
