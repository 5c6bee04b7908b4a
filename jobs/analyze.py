"""spark-submit entry point for the analyze stage.

    spark-submit [spark options] jobs/analyze.py --model NAME/VERSION [--scale-bins 1um,2um]
        [--features embedding|logits] [--coding-dim 10|auto] [--within-category CATEGORY]

Thin by design: the semspark CLI parses the arguments, loads conf/, builds the session from
Spark's configuration and calls semspark.analysis.job.run_analysis. The study runs on the driver:
give it the memory (--driver-memory) that analysis.max_collect_bytes and complete linkage need.
"""
import sys

from semspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", *sys.argv[1:]]))
