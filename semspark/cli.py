"""``semspark <command>``: the one command line for people; ``jobs/*.py`` call the same commands.

Commands: synth, ingest, rescale, train, infer, promote, models, nightly, label, quarantine, compact, catalog, analyze, sql,
sql-server, scale, spark-conf, demo, web, web-user. Each parses its arguments, loads the config, builds the SparkSession if it needs one, calls
one library function and prints a result.

Exit codes (semspark/errors.py): 0 done; 1 the run failed and a rerun is the thing to do; 2 the command
cannot run as given; 3 the run finished below a quality gate.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from semspark.errors import (EXIT_OK, EXIT_QUALITY_GATE, EXIT_RETRY, EXIT_USAGE, RunFailed, infer_gate, ingest_gate,
                             is_usage_error)

log = logging.getLogger("semspark")


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semspark", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (default: $SEMSPARK_CONF or conf/semspark.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("synth", help="write a synthetic SEM data set with a manifest of the truth")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per category)")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=512, help="image width in pixels (default 512)")
    p.add_argument("--height", type=int, default=384, help="height of the image above the databar")

    p = sub.add_parser("ingest", help="ingest raw SEM files into the dataset and the catalog")
    add_ingest_arguments(p)

    p = sub.add_parser("rescale", help="read the scale of ingested images again, or correct it from a CSV")
    add_rescale_arguments(p)

    p = sub.add_parser("train", help="train a CNN with Horovod on Spark over the ingested images")
    add_train_arguments(p)

    p = sub.add_parser("infer", help="score every image a model version has not scored yet")
    add_infer_arguments(p)

    p = sub.add_parser("promote", help="mark a model version as production (sem.latest_predictions)")
    p.add_argument("--model", dest="model_option", help="NAME/VERSION or NAME/latest")
    p.add_argument("model", nargs="?", help=argparse.SUPPRESS)   # the older positional spelling

    p = sub.add_parser("models", help="registered models: list them, or compare runs (scores with their "
                                      "95%% intervals, test accuracy per epoch on one plot)")
    models = p.add_subparsers(dest="models_command", required=True, metavar="action")
    models.add_parser("list", help="every registered model version with its test accuracy and calibration")
    q = models.add_parser("compare", help="several models side by side and their test accuracy per epoch "
                                          "on one plot (the paper's Figures 1 and 2)")
    q.add_argument("models", nargs="+", help="NAME/VERSION or NAME/latest")
    q.add_argument("--out", help="the plot's file (default: models/compare-....png under SEMSPARK_HOME)")

    p = sub.add_parser("nightly", help="ingest what is new and score it with the production model")
    add_ingest_arguments(p)

    p = sub.add_parser("catalog", help="the catalog's metastore: move an embedded Derby catalog to PostgreSQL")
    catalog = p.add_subparsers(dest="catalog_command", required=True, metavar="action")
    q = catalog.add_parser("move-to-postgresql", help="describe the Derby catalog's tables and views in the "
                                                      "PostgreSQL metastore this configuration names (data stays)")
    add_json_argument(q)
    q = catalog.add_parser("init", help="make the PostgreSQL metastore's schema (once; deploy/metastore.sh start "
                                        "runs it)")
    # (the init makes no database: each is made, at its place under SEMSPARK_HOME, by its first use)
    add_json_argument(q)

    p = sub.add_parser("compact", help="rewrite tables and dataset bins holding many small files into few "
                                       "(safe if killed; the nightly does it past the compaction thresholds)")
    p.add_argument("--force", action="store_true", help="every table, partition and bin holding more files than "
                                                        "its size needs, not only those over the thresholds")
    p.add_argument("--check", action="store_true", help="only check the dataset's Petastorm metadata against its "
                                                        "files, and count files; rebuild the metadata if it differs")
    add_json_argument(p)

    p = sub.add_parser("label", help="add or correct labels in sem.labels (the one label source; training reads "
                                     "the current ones) without touching pixels")
    p.add_argument("--csv", metavar="FILE.csv", help="rows image_id,label or path,label; an empty label removes it")
    p.add_argument("--image-id", help="one image (with --label): a person's correction")
    p.add_argument("--label", help="the label for --image-id; '' removes the image's label")
    p.add_argument("--who", help="who labels (default: $SEMSPARK_USER or the login name)")
    add_json_argument(p)

    p = sub.add_parser("quarantine", help="files that could not be ingested: list them, or have the next "
                                          "ingest try them again")
    quarantine = p.add_subparsers(dest="quarantine_command", required=True, metavar="action")
    q = quarantine.add_parser("list", help="quarantined files, newest first: path, stage, reason, retryable")
    q.add_argument("--stage", action="append", default=[], help="only this stage (read, decode, limits, sidecar); "
                                                                 "repeatable")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    q.add_argument("--limit", type=int, default=1000)
    q = quarantine.add_parser("retry", help="mark quarantined files (of --stage, or all) to be read again by the "
                                            "next ingest or nightly run over their folder")
    q.add_argument("--stage", action="append", default=[], help="only this stage; repeatable")

    p = sub.add_parser("analyze", help="the paper's unsupervised study on a model's predictions: "
                                       "autoencoder, 2-NN, hierarchical clustering, NMI, report")
    add_analyze_arguments(p)

    p = sub.add_parser("sql", help="run SQL on the catalog and print the result")
    p.add_argument("query")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--limit", type=int, default=10_000, help="print at most this many rows")

    p = sub.add_parser("sql-server", help="serve the catalog over JDBC/ODBC (Spark's Thrift server) for beeline and BI tools")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=10000)
    p.add_argument("--master", help="Spark master for the server's queries (default: the embedded local[*])")

    p = sub.add_parser("scale", help="read the scale of image files (no Spark): one JSON line each, with "
                                     "what was read and why")
    p.add_argument("files", nargs="+")
    p.add_argument("--debug", metavar="DIR", help="also write a picture per file: the band, the bar (and the "
                                                  "length measured) and the chosen label boxed")

    sub.add_parser("spark-conf", help="print spark-submit --conf flags for the embedded catalog")

    p = sub.add_parser("web", help="the web app: gallery, image pages, corrections, JSON API (no Spark; it "
                                   "never holds the catalog)")
    p.add_argument("--host", help="address to listen on (default web.host: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, help="default web.port (8080)")

    p = sub.add_parser("web-user", help="accounts of the web app (web.users_file): add, remove, token, list")
    users = p.add_subparsers(dest="action", required=True, metavar="action")
    q = users.add_parser("add", help="add a user, or set a user's password (asked for, or from stdin with "
                                     "--password-stdin)")
    q.add_argument("name")
    q.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    q = users.add_parser("remove", help="remove a user and their API token")
    q.add_argument("name")
    q = users.add_parser("token", help="make an API token for a user (printed once; replaces the previous one)")
    q.add_argument("name")
    users.add_parser("list", help="the users")

    p = sub.add_parser("demo", help="generate a demo data set, ingest it, and show what is in the catalog")
    p.add_argument("--n", type=int, default=600, help="synthetic images (default 600)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-train", action="store_true", help="stop after ingest")
    return parser


def add_ingest_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="folder of raw files: a path or file://, hdfs://, s3a:// URI")
    p.add_argument("--labels", help="'folders' (category = top folder) or a CSV with path,label or image_id,label")
    add_json_argument(p)


def add_json_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object (with the quality "
                                                        "gate's reasons and the exit code) instead of lines")


def add_infer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="NAME/VERSION or NAME/latest (default: the production model)")
    p.add_argument("--scale-bins", default="all", help="comma-separated scale bins to score, or 'all' (default)")
    add_json_argument(p)


def add_analyze_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="NAME/VERSION or NAME/latest (its predictions must exist)")
    p.add_argument("--scale-bins", help="comma-separated scale bins, or 'all' (default: analysis.scale_bins, 1um,2um)")
    p.add_argument("--features", choices=("embedding", "logits"), help="default: analysis.features (embedding)")
    p.add_argument("--coding-dim", help="autoencoder coding dimension, or 'auto' (default: analysis.coding_dim, 10)")
    p.add_argument("--within-category", help="analyse only the images predicted as this category")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from semspark.train.job import TrainRequest
    from semspark.train.spec import ARCHITECTURES, DEFAULT_LEARNING_RATE, MODES, REFITTED_BY_DEFAULT

    d = TrainRequest()
    p.add_argument("--arch", choices=ARCHITECTURES, default=d.arch)
    p.add_argument("--mode", choices=MODES, default=d.mode,
                   help="scratch; feature_extraction (train the last layer only); fine_tuning (train all); "
                        "feature_extraction_then_fine_tuning (--epochs of the first, --fine-tune-epochs of the second)")
    p.add_argument("--init", default=d.init, help="random | imagenet:PATH (local Keras weights file) | model:NAME/VERSION")
    p.add_argument("--name", default=d.name, help="model name; every run makes a new version NAME/N")
    p.add_argument("--run-id", help="resume this interrupted run (printed when a run fails)")
    p.add_argument("--scale-bins", default="all", help="comma-separated scale bins to train on, or 'all' (default)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--fine-tune-epochs", type=int, default=d.fine_tune_epochs,
                   help="with --mode feature_extraction_then_fine_tuning: epochs of the fine-tuning phase")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="per rank; 0 (default): 32, smaller for a small training set so that an epoch takes at least "
                        "16 steps (the default learning rate follows its square root)")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate,
                   help="peak rate per rank at a batch of 32, scaled by --num-proc (default: the architecture's own: "
                        + ", ".join(f"{arch} {rate:g}" for arch, rate in DEFAULT_LEARNING_RATE.items())
                        + "; moved to the batch by its square root; a tenth of it with --mode fine_tuning)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=d.optimizer)
    p.add_argument("--num-proc", type=int, default=d.num_proc, help="Horovod ranks (Spark tasks)")
    p.add_argument("--input-size", type=int, default=d.input_size,
                   help="input side in px (default: the architecture's own: compact_cnn 64, alexnet 227, "
                        "inception_* 299, convnext_tiny and efficientnetv2_s 224)")
    p.add_argument("--seed", type=int, default=d.seed, help="split and initialisation seed")
    p.add_argument("--patience", type=int, default=d.patience,
                   help="stop after this many epochs without a better validation accuracy (default 0: never; "
                        "for --schedule constant: a cosine schedule stopped early ends at a high rate)")
    p.add_argument("--keep", choices=("auto", "last", "best"), default=d.keep,
                   help="the epoch registered: the last, or the most accurate on validation (auto, default: "
                        "the last under the cosine schedule, the best under a constant rate)")
    p.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs,
                   help="linear learning-rate warm-up, then --schedule")
    p.add_argument("--schedule", choices=("cosine", "constant"), default=d.schedule,
                   help="learning rate after the warm-up: cosine decay to zero, or constant")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="decoupled weight decay per unit of learning rate (0 = none)")
    p.add_argument("--mixup", type=float, default=d.mixup, metavar="ALPHA",
                   help="train on mixed pairs of images (mixup, share from Beta(ALPHA, ALPHA)); 0 (default): off")
    p.add_argument("--class-weights", choices=("balanced", "none"), default=d.class_weighting,
                   help="balanced: each category weighs the same in the loss, however rare")
    p.add_argument("--validation-fraction", type=float, default=d.validation,
                   help="share of the labelled images held out for validation, on which the temperature and the "
                        "uncertain threshold are fitted (default: 0.2 when refitting, else 0.1; at most 0.4, the "
                        "test split takes 0.2): with a few hundred labelled images, 0.2 pins the temperature down "
                        "better")
    p.add_argument("--uncertain-target", type=float, default=d.uncertain_target,
                   help="predictions are flagged uncertain below the confidence at which validation images "
                        "are right this often (default 0.99)")
    p.add_argument("--refit-with-validation", action=argparse.BooleanOptionalAction, default=d.refit_with_validation,
                   help="after the temperature and the uncertain threshold are fitted on the validation images, "
                        "train again on the training and validation images together and register that model "
                        "with them: the calibration of a larger validation share without its cost in training "
                        "images, at twice the training time (default: on for "
                        + ", ".join(sorted(REFITTED_BY_DEFAULT)) + ", the architectures measured to meet the "
                        "calibration target refitted, unless --patience, --keep best or --schedule constant need "
                        "the validation images; --no-refit-with-validation halves the training time)")
    p.add_argument("--mixed-precision", action="store_true", help="float16 compute (GPU executors)")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    args = _parser().parse_args(argv)
    # semspark's own progress at INFO; other libraries (py4j, Horovod's rendezvous, petastorm) log
    # routine chatter on the root logger, so the root stays at WARNING unless --verbose.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("semspark").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"semspark {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        explained = _explain(exc)
        if explained is None:
            raise                       # a bug: its traceback, and Python's exit 1 (retry, then report)
        message, code = explained
        print(f"semspark {args.command}: {message}", file=sys.stderr)
        return code


def add_rescale_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--select", choices=("all", "unknown", "low", "older", "corrections"), default="low",
                   help="which images to read again: all; unknown (scale_bin unknown); low (confidence low or "
                        "none, the default); older (read by an older reader); corrections (only corrected images: "
                        "those in --corrections, and those corrected elsewhere, e.g. in the web app, not applied yet)")
    p.add_argument("--corrections", metavar="FILE.csv",
                   help="corrections: path or image_id, value, unit[, bar_px] per row; kept in "
                        "sem.scale_corrections, they win over any reading")


def _explain(exc: Exception) -> tuple[str, int] | None:
    """A clear message and the exit code for the errors semspark knows; None for bugs (which keep
    their traceback)."""
    from semspark.nightly import NightlyError

    if isinstance(exc, RunFailed):
        return str(exc), EXIT_RETRY
    if is_usage_error(exc) or isinstance(exc, NightlyError):
        return str(exc), EXIT_USAGE
    text = str(exc)
    if "Another instance of Derby" in text or "Failed to start database" in text:
        from semspark.config import semspark_home
        return (f"the embedded catalog under {semspark_home()} is in use by another semspark process "
                "(Derby admits one at a time); wait for it to finish, or use a PostgreSQL metastore "
                "(catalog.metastore: postgresql, deploy/metastore.sh)", EXIT_RETRY)
    if "Required table missing" in text:
        return ("the PostgreSQL metastore has no schema yet: run semspark catalog init (deploy/metastore.sh start "
                "does) and rerun", EXIT_USAGE)
    if "org.postgresql" in text and ("Connection refused" in text or "Connection to" in text):
        return ("the PostgreSQL metastore (catalog.postgresql_url) does not answer: start it "
                "(deploy/metastore.sh start) and rerun", EXIT_RETRY)
    try:
        from pyspark.errors import AnalysisException, ParseException
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, (AnalysisException, ParseException)):
        return (text.split("\n")[0] if text else type(exc).__name__), EXIT_USAGE
    return None


def _config(args):
    from semspark.config import load_config
    return load_config(args.config)


def _session(config, app: str, extra: dict | None = None):
    from semspark.session import console_progress, session_scope
    return session_scope(config, app_name=f"semspark-{app}", extra={**console_progress(), **(extra or {})})


# What a stage's driver imports after its session starts (pandas alone 0.5 s; cv2 and the TFLite
# runtime for a night scored in the driver): imported while the JVM starts, which the driver spends
# waiting (1.8 s of a night).
DRIVER_MODULES = ("pandas", "pyarrow.parquet", "pyarrow.dataset", "cv2", "tflite_runtime.interpreter")


def _run_stage(args, app: str, run, gate=None, extra: dict | None = None) -> int:
    """Load the config, run ``run(spark, config)`` in a session, print its summary (lines, or one
    JSON object with ``--json``); exit 3 when ``gate(result, config.quality)`` gives reasons."""
    from semspark.session import import_in_background

    config = _config(args)
    import_in_background(DRIVER_MODULES)   # while the JVM starts
    with _session(config, app, extra) as spark:
        result = run(spark, config)
    reasons = gate(result, config.quality) if gate else []
    code = EXIT_QUALITY_GATE if reasons else EXIT_OK
    if getattr(args, "json", False):
        print(json.dumps({**result.as_dict(), "quality_gate": reasons, "exit_code": code}, default=str))
    else:
        print("\n".join(result.lines()))
    for reason in reasons:
        print(f"semspark {app}: quality gate: {reason}", file=sys.stderr)
    return code


def parse_scale_bins(text: str | None) -> tuple[str, ...]:
    """``--scale-bins``: 'all' (or nothing) is every bin, (); else the comma-separated bins."""
    bins = tuple(b.strip() for b in (text or "").split(",") if b.strip())
    return () if bins in ((), ("all",)) else bins


def cmd_synth(args) -> int:
    from semspark.synth.generate import generate

    if args.n < 1:
        raise UserError("--n must be at least 1")
    records = generate(args.out, args.n, seed=args.seed, width=args.width, height=args.height)
    print(f"wrote {len(records)} images and manifest.csv to {args.out}")
    return 0


def cmd_ingest(args) -> int:
    from semspark.ingest.job import run_ingest

    return _run_stage(args, "ingest", lambda spark, config: run_ingest(spark, config, args.input, labels=args.labels),
                      gate=ingest_gate)


def cmd_rescale(args) -> int:
    from semspark.ingest.rescale import run_rescale

    return _run_stage(args, "rescale", lambda spark, config: run_rescale(spark, config, args.select, args.corrections))


def train_request(args):
    """The TrainRequest the flags of ``semspark train`` ask for (not yet checked)."""
    from semspark.train.job import TrainRequest

    return TrainRequest(
        arch=args.arch, mode=args.mode, init=args.init, name=args.name, run_id=args.run_id,
        scale_bins=parse_scale_bins(args.scale_bins), epochs=args.epochs,
        fine_tune_epochs=args.fine_tune_epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, optimizer=args.optimizer,
        num_proc=args.num_proc, input_size=args.input_size, seed=args.seed, patience=args.patience, keep=args.keep,
        warmup_epochs=args.warmup_epochs, mixed_precision=args.mixed_precision, schedule=args.schedule,
        label_smoothing=args.label_smoothing, weight_decay=args.weight_decay, class_weighting=args.class_weights,
        mixup=args.mixup, uncertain_target=args.uncertain_target, validation=args.validation_fraction,
        refit_with_validation=args.refit_with_validation)


def cmd_train(args) -> int:
    from semspark.train.job import run_training

    request = train_request(args)
    request.check()
    return _run_stage(args, "train", lambda spark, config: run_training(spark, config, request))


def cmd_infer(args) -> int:
    from semspark.infer.job import run_inference

    bins = list(parse_scale_bins(args.scale_bins)) or None
    return _run_stage(args, "infer", lambda spark, config: run_inference(spark, config, args.model, scale_bins=bins),
                      gate=infer_gate)


def cmd_promote(args) -> int:
    from semspark.infer.job import LATEST_VIEW, promote

    if args.model and args.model_option and args.model != args.model_option:
        raise UserError(f"two models given ({args.model} and --model {args.model_option}): give one")
    spec = args.model_option or args.model
    if not spec:
        raise UserError("give the model to promote: --model NAME/VERSION (or NAME/latest)")
    config = _config(args)
    with _session(config, "promote") as spark:
        model_version = promote(spark, config, spec)
    print(f"{model_version} is the production model; {config.catalog.database}.{LATEST_VIEW} shows its predictions")
    return 0


def cmd_models(args) -> int:
    from semspark.train.compare import compare_models, list_models

    if args.models_command == "list":
        print("\n".join(list_models()))
        return 0
    lines, _ = compare_models(args.models, args.out)
    print("\n".join(lines))
    return 0


def cmd_nightly(args) -> int:
    from semspark.nightly import run_nightly

    return _run_stage(args, "nightly", lambda spark, config: run_nightly(spark, config, args.input, labels=args.labels),
                      gate=lambda result, quality: result.quality_gate)


def cmd_catalog(args) -> int:
    from semspark.metastore import InitSummary, init_schema, move_to_postgresql, warm_up

    config = _config(args)
    # DataNucleus may add its own tables during the first operations of an init or a move (the
    # schema exists by then: nothing can deadlock)
    url = init_schema(config)
    first_use = {"spark.hadoop.datanucleus.schema.autoCreateAll": "true"}
    if args.catalog_command == "init":
        def init(spark, config):
            warm_up(spark)
            return InitSummary(url=url, database=config.catalog.database)
        return _run_stage(args, "catalog", init, extra=first_use)
    return _run_stage(args, "catalog", lambda spark, config: move_to_postgresql(spark, config), extra=first_use)


def cmd_compact(args) -> int:
    from semspark.compaction import compact, file_counts
    from semspark.dataset import ensure_consistent

    if args.check:
        config = _config(args)
        with _session(config, "compact") as spark:
            repaired = ensure_consistent(spark, config)
            counts = file_counts(spark, config)
        if args.json:
            print(json.dumps({"repaired": repaired, "files": counts, "exit_code": 0}))
        else:
            print("dataset metadata: " + ("rebuilt (" + "; ".join(repaired) + ")" if repaired else "matches the files"))
            print("\n".join(f"  {name:<32}{n} files" for name, n in sorted(counts.items())))
        return 0
    return _run_stage(args, "compact", lambda spark, config: compact(spark, config, force=args.force))


def cmd_label(args) -> int:
    from semspark.labels import label_from_csv, label_one

    if bool(args.csv) == bool(args.image_id):
        raise UserError("give --csv FILE, or --image-id ID with --label NAME")
    if args.image_id and args.label is None:
        raise UserError("--image-id needs --label (an empty --label '' removes the label)")
    if args.csv and args.label is not None:
        raise UserError("--label goes with --image-id; a CSV carries its labels")
    if args.csv:
        return _run_stage(args, "label", lambda spark, config: label_from_csv(
            spark, config.catalog.database, args.csv, labelled_by=args.who))
    return _run_stage(args, "label", lambda spark, config: label_one(
        spark, config.catalog.database, args.image_id, args.label or None, labelled_by=args.who))


def cmd_quarantine(args) -> int:
    from semspark.ingest.quarantine import list_quarantine, mark_retryable

    config = _config(args)
    with _session(config, "quarantine") as spark:
        if args.quarantine_command == "list":
            print(list_quarantine(spark, config, tuple(args.stage), args.format, args.limit))
        else:
            print("\n".join(mark_retryable(spark, config, tuple(args.stage)).lines()))
    return EXIT_OK


def cmd_sql_server(args) -> int:
    import ipaddress
    import socket

    from semspark.sqlserver import beeline_url, launcher_env, thrift_server_command

    config = _config(args)
    if not 0 < args.port < 65536:
        raise UserError("--port must be within 1..65535")
    with socket.socket() as probe:
        try:
            probe.bind((args.host, args.port))
        except OSError as exc:
            raise UserError(f"cannot listen on {args.host}:{args.port} ({exc.strerror}); choose another --port") from exc
    try:
        loopback = ipaddress.ip_address(socket.gethostbyname(args.host)).is_loopback
    except (OSError, ValueError):
        loopback = False
    if not loopback:
        log.warning("the SQL server has no authentication and will accept anyone who reaches %s:%d",
                    args.host, args.port)
    command = thrift_server_command(config, args.host, args.port, master=args.master)
    print(f"starting Spark's Thrift server on {args.host}:{args.port} (Ctrl-C stops it); connect with\n"
          f"  beeline -u {beeline_url(args.host, args.port, config.catalog.database)}", file=sys.stderr)
    sys.stderr.flush()
    os.execvpe(command[0], command, launcher_env())  # the server replaces this process: signals reach it
    return 0  # pragma: no cover


def cmd_analyze(args) -> int:
    from semspark.analysis.job import AnalysisRequest, run_analysis

    bins = None
    if args.scale_bins is not None:
        bins = parse_scale_bins(args.scale_bins)
    request = AnalysisRequest(model=args.model, scale_bins=bins, features=args.features,
                              coding_dim=args.coding_dim, within_category=args.within_category)
    return _run_stage(args, "analyze", lambda spark, config: run_analysis(spark, config, request))


def cmd_sql(args) -> int:
    from semspark.catalog import format_result, run_sql

    config = _config(args)
    with _session(config, "sql") as spark:
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {config.catalog.database}")
        columns, rows, truncated = run_sql(spark, args.query, limit=args.limit)
    if columns:
        print(format_result(columns, rows, args.format))
    if truncated:
        print(f"(only the first {args.limit} rows; raise --limit for more)", file=sys.stderr)
    return 0


def cmd_scale(args) -> int:
    from semspark.ingest.process import read_scale_files

    from semspark.ingest.debug import reading_caption, reading_summary, write_debug_picture

    config = _config(args)
    for outcome in read_scale_files(args.files, config.ingest, keep_reading=True):
        row = {"file": outcome.path, "ok": outcome.ok}
        if outcome.ok:
            row.update(outcome.scale.as_dict())
            row["databar_px"] = outcome.databar_px
            reading = outcome.extra["reading"]
            row.update(reading_summary(reading))
            if args.debug:
                row["debug_picture"] = str(write_debug_picture(args.debug, outcome.path, outcome.extra["decoded"],
                                                               reading, reading_caption(outcome.scale, reading)))
        else:
            row.update(stage=outcome.stage, reason=outcome.reason)
        print(json.dumps(row, ensure_ascii=False))
    return 0


def cmd_spark_conf(args) -> int:
    from semspark.session import spark_submit_flags

    # Unquoted, for `spark-submit $(semspark spark-conf) ...`: the shell splits the words on white
    # space and would keep quotes literally; no value holds white space (SEMSPARK_HOME must not).
    print(" ".join(spark_submit_flags(_config(args))))
    return 0


def cmd_demo(args) -> int:
    from semspark.demo import run_demo

    return run_demo(_config(args), n=args.n, seed=args.seed, train=not args.no_train)


def cmd_web(args) -> int:
    from semspark.web.app import serve

    config = _config(args)
    host, port = args.host or config.web.host, args.port or config.web.port
    if not 0 < port < 65536:
        raise UserError("--port must be within 1..65535")
    import socket
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from exc
    print(f"semspark web on http://{host}:{port}/ (Ctrl-C stops it)", file=sys.stderr)
    sys.stderr.flush()
    serve(config, host, port)
    return 0


def cmd_web_user(args) -> int:
    import getpass

    from semspark.config import semspark_home
    from semspark.web.accounts import AccountError, Accounts

    accounts = Accounts(semspark_home() / _config(args).web.users_file)
    try:
        if args.action == "add":
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
            else:
                password = getpass.getpass(f"password for {args.name}: ")
                if getpass.getpass("again: ") != password:
                    raise UserError("the two passwords differ")
            accounts.add_user(args.name, password)
            print(f"{args.name} can log in ({accounts.path})")
        elif args.action == "remove":
            if not accounts.remove_user(args.name):
                raise UserError(f"no user {args.name} in {accounts.path}")
            print(f"{args.name} removed")
        elif args.action == "token":
            print(accounts.new_token(args.name))
            print("(shown once; scripts send it as Authorization: Bearer TOKEN)", file=sys.stderr)
        else:
            print("\n".join(accounts.names()))
    except AccountError as exc:
        raise UserError(str(exc)) from exc
    return 0


COMMANDS = {"synth": cmd_synth, "ingest": cmd_ingest, "rescale": cmd_rescale, "train": cmd_train, "infer": cmd_infer,
            "promote": cmd_promote, "models": cmd_models, "nightly": cmd_nightly, "analyze": cmd_analyze,
            "quarantine": cmd_quarantine, "label": cmd_label, "compact": cmd_compact, "catalog": cmd_catalog, "sql": cmd_sql, "sql-server": cmd_sql_server,
            "scale": cmd_scale, "spark-conf": cmd_spark_conf, "demo": cmd_demo, "web": cmd_web,
            "web-user": cmd_web_user}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
