"""spark-submit entry point for re-reading or correcting the scale of ingested images.

    spark-submit [spark options] jobs/rescale.py [--select all|unknown|low|older|corrections] [--corrections FILE.csv]

Thin by design: the semspark CLI parses the arguments, loads conf/, builds the session from
Spark's configuration and calls semspark.ingest.rescale.run_rescale.
"""
import sys

from semspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["rescale", *sys.argv[1:]]))
