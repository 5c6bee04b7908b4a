"""spark-submit entry point for the ingest stage.

    spark-submit [spark options] jobs/ingest.py --input PATH [--labels folders|FILE.csv]

Thin by design: the semspark CLI parses the arguments, loads conf/, builds the session from
Spark's configuration and calls semspark.ingest.job.run_ingest.
"""
import sys

from semspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
