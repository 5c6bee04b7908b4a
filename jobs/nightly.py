"""spark-submit entry point for the nightly job: ingest what is new, score it, record the run.

    spark-submit [spark options] jobs/nightly.py --input PATH [--labels folders|CSV]

Thin by design: the semspark CLI parses the arguments, loads conf/, builds the session from
Spark's configuration and calls semspark.nightly.run_nightly. Exits non-zero, with a message
naming the failed step, when anything fails; safe to rerun.
"""
import sys

from semspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["nightly", *sys.argv[1:]]))
