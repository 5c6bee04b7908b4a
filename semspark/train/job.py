"""The train stage: Horovod on Spark over the ingest stage's Petastorm dataset.

The driver picks the labelled images (metadata only), splits them once per run (recorded in the
run folder, so a resumed run and every later evaluation use the same test images), starts
``num_proc`` Horovod ranks with horovod.spark.run (Gloo on CPU, NCCL on GPU builds), and, when
they are done, registers the best checkpoint as a new model version with its metadata, history,
figures, and rows in sem.models and sem.training_history.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from semspark.catalog import append_rows, ensure_tables, new_run_id, qualified, unknown_scale_bins, utc_now
from semspark.config import PROJECT_ROOT, Config
from semspark.errors import RunFailed
from semspark.dataset import dataset_url, ensure_consistent, stored_image_size
from semspark.schema import IMAGES, MODELS, TRAIN_TABLES, TRAINING_HISTORY
from semspark import registry
from semspark.train.data import labelled_images, make_split
from semspark.train.evaluation import WIDE_TEMPERATURE_INTERVAL
from semspark.train.spec import (ARCHITECTURES, MIN_INPUT_SIZES, MODES, REFITTED_BY_DEFAULT, ModelError,
                                 batch_size_for, input_size_for, learning_rate_for, parse_init, rate_for_batch)

log = logging.getLogger(__name__)


class TrainError(RuntimeError):
    """Training could not start or did not finish; the message says what to do."""


class TrainRunFailed(TrainError, RunFailed):
    """The Horovod run failed part-way; its checkpoints are kept and a rerun resumes it."""


@dataclass(frozen=True)
class TrainRequest:
    arch: str = "inception_v3"
    mode: str = "scratch"
    init: str = "random"
    name: str = "sem"
    run_id: str | None = None
    scale_bins: tuple[str, ...] = ()
    epochs: int = 10
    fine_tune_epochs: int = 0              # feature_extraction_then_fine_tuning: the second phase
    batch_size: int = 0                    # per rank; 0: 32, smaller for a small set (spec.batch_size_for)
    learning_rate: float = 0.0             # peak, per rank; 0: the architecture's own (spec.learning_rate_for)
    optimizer: str = "adam"                # adam | sgd (momentum 0.9)
    num_proc: int = 1
    input_size: int = 0                    # 0: the architecture's own (spec.DEFAULT_INPUT_SIZE)
    seed: int = 0
    validation: float = 0.0               # share held out for validation; 0: 0.2 when refitting, else 0.1
    test: float = 0.2
    warmup_epochs: int = 1
    patience: int = 0                      # epochs without a better validation accuracy before stopping; 0: never
    keep: str = "auto"                     # the epoch registered: last | best (on validation) | auto
    mixed_precision: bool = False
    schedule: str = "cosine"               # cosine | constant (after the warm-up)
    label_smoothing: float = 0.1
    weight_decay: float = 1e-4             # decoupled, per unit of learning rate
    class_weighting: str = "balanced"      # balanced | none
    mixup: float = 0.0                     # Beta alpha of mixup's share (recipe.mix_batches_in_training); 0: off
    uncertain_target: float = 0.99         # accuracy the confident predictions reach on validation
    # after calibrating on validation, train again on training + validation and register that model
    # with the first model's calibration (twice the training time); None: on, unless validation has
    # to stop the run early or choose its epoch (resolved_refit)
    refit_with_validation: bool | None = None

    @property
    def resolved_input_size(self) -> int:
        return input_size_for(self.arch, self.input_size)

    @property
    def resolved_keep(self) -> str:
        """auto: the last epoch under the cosine schedule, whose rate ends at zero: the model the schedule
        converges to, and the validation images stay unseen by any choice, so the temperature and the
        uncertain threshold fitted on them hold on new images (measured, bench/train_quality_bench.py
        --select: keeping the best of 25 epochs on 64 validation images chose epoch 15 on one seed of
        three, 0.946 accuracy on 1,000 new images against 0.971 for the last, and its calibration,
        fitted on the images that chose it, left an ECE of 0.024 there against 0.011). The best epoch
        under a constant rate, which never settles."""
        if self.keep != "auto":
            return self.keep
        return "last" if self.schedule == "cosine" else "best"

    @property
    def resolved_refit(self) -> bool:
        """Whether the registered model is refitted on training + validation (resolved_validation:
        then 0.2 of the images are validation). On by default for spec.REFITTED_BY_DEFAULT: on
        compact_cnn, AlexNet and Inception-v3 (three seeds each) it meets 0.03 expected calibration
        error on every seed and is more accurate than holding 0.1 out (bench/train_quality_bench.py
        --validation-fraction 0.2 --refit-with-validation: over nine models, 0.8 points on 1,000 new
        images, and Inception-v3's seed 1 at 0.014 where 0.1 left 0.038), at twice the training
        time. Off when asked (--no-refit-with-validation); for the other architectures (measured
        to miss the target refitted, EfficientNetV2-S and Inception-v4, or not measured refitted;
        all meet it at 0.1); and when validation has to stop the run (--patience) or choose its
        epoch (--keep best, --schedule constant): the refit has no validation images left."""
        if self.refit_with_validation is not None:
            return self.refit_with_validation
        if self.refit_off_for_architecture is not None:
            return False
        return not (self.patience or self.resolved_keep == "best")

    @property
    def refit_off_for_architecture(self) -> str | None:
        """Why this run is not refitted although nothing was asked, when the reason is its
        architecture (run_training logs it, so that a user of Inception-v4 sees why its training
        takes half the time of Inception-v3's); None otherwise."""
        if self.refit_with_validation is not None or self.arch in REFITTED_BY_DEFAULT:
            return None
        return (f"{self.arch} is not refitted on training + validation by default (only "
                f"{', '.join(sorted(REFITTED_BY_DEFAULT))} were measured to meet the calibration target "
                f"refitted; README, Train): --refit-with-validation to refit it")

    @property
    def resolved_validation(self) -> float:
        """The share held out for validation: as asked, or 0.2 when refitting (the refitted model
        trains on those images too, so a larger share costs it nothing and pins the temperature
        down), 0.1 otherwise (every validation image is then a training image lost: about a point of
        accuracy at 0.2 on 640 images)."""
        return self.validation or (0.2 if self.resolved_refit else 0.1)

    @property
    def resolved_learning_rate(self) -> float:
        return learning_rate_for(self.arch, self.mode, self.learning_rate)

    def check(self) -> None:
        problems = []
        if self.arch not in ARCHITECTURES:
            problems.append(f"--arch must be one of {', '.join(ARCHITECTURES)}")
        if self.mode not in MODES:
            problems.append(f"--mode must be one of {', '.join(MODES)}")
        if self.mode != "scratch" and self.init == "random":
            problems.append(f"--mode {self.mode} starts from a trained network: give --init imagenet:PATH "
                            "or model:NAME/VERSION")
        if self.arch in MIN_INPUT_SIZES and self.input_size and self.input_size < MIN_INPUT_SIZES[self.arch]:
            problems.append(f"--input-size must be at least {MIN_INPUT_SIZES[self.arch]} for {self.arch}")
        if self.schedule not in ("cosine", "constant"):
            problems.append("--schedule must be cosine or constant")
        if not 0 <= self.label_smoothing < 1:
            problems.append("--label-smoothing must be in [0, 1)")
        if self.weight_decay < 0:
            problems.append("--weight-decay must not be negative")
        if not 0 < self.uncertain_target < 1:
            problems.append("--uncertain-target must be a share between 0 and 1 (e.g. 0.99)")
        if not (self.validation == 0 or 0 < self.validation <= 0.4):
            problems.append("--validation-fraction must be over 0 and at most 0.4 (the test split takes 0.2), "
                            "or 0 for the default (0.2 when refitting, else 0.1)")
        if not self.mixup >= 0:
            problems.append("--mixup must be 0 (off) or a positive Beta alpha (e.g. 0.4)")
        if self.keep not in ("auto", "last", "best"):
            problems.append("--keep must be last, best or auto")
        if self.patience < 0:
            problems.append("--patience must be 0 (no early stopping) or a number of epochs")
        if self.refit_with_validation and (self.patience or self.resolved_keep == "best"):
            problems.append("--refit-with-validation trains the second model on the validation images, so no "
                            "validation image is left to stop it early or choose its epoch: drop --patience and "
                            "--keep best (and --schedule constant, whose epoch is chosen on validation), or "
                            "drop --refit-with-validation")
        if self.class_weighting not in ("balanced", "none"):
            problems.append("--class-weights must be balanced or none")
        for flag, value in (("--epochs", self.epochs), ("--num-proc", self.num_proc)):
            if value < 1:
                problems.append(f"{flag} must be at least 1")
        if self.batch_size < 0:
            problems.append("--batch-size must be at least 1 (or 0 for 32, smaller for a small training set)")
        if self.mode == "feature_extraction_then_fine_tuning" and self.fine_tune_epochs < 1:
            problems.append("--mode feature_extraction_then_fine_tuning needs --fine-tune-epochs (at least 1)")
        if not self.learning_rate >= 0:
            problems.append("--learning-rate must be positive (or 0 for the architecture's own)")
        if self.optimizer not in ("sgd", "adam"):
            problems.append("--optimizer must be sgd or adam")
        try:
            parse_init(self.init)
            registry.check_name(self.name)
            if self.run_id:
                registry.check_name(self.run_id, "run id")
        except (ModelError, registry.RegistryError) as exc:
            problems.append(str(exc))
        if problems:
            raise TrainError("; ".join(problems))


@dataclass
class TrainResult:
    model_version: str
    run_id: str
    path: str
    best_epoch: int
    test_accuracy: float
    per_category_accuracy: dict[str, float]
    train_images: int
    groups_merged: int
    test_scores: dict = dataclasses.field(default_factory=dict)
    calibration: dict = dataclasses.field(default_factory=dict)
    kept: str = ""                         # which epoch best_epoch is: "the last" or "best on validation"
    refit: dict = dataclasses.field(default_factory=dict)   # refitted on training + validation: the first model

    def lines(self) -> list[str]:
        def spread(score):
            return f"{score['value']:.3f} (95% interval {score['low']:.3f}-{score['high']:.3f})"

        out = [f"model {self.model_version} (run {self.run_id})", f"  saved in {self.path}",
               f"  training images: {self.train_images} (near-duplicate groups kept together: {self.groups_merged})",
               f"  registered epoch: {self.best_epoch}" + (f" ({self.kept})" if self.kept else "")]
        if self.refit:
            out.insert(2, f"  refitted on training + validation images; the first model, trained on "
                          f"{self.refit['first_model_train_images']}, scored {self.refit['first_model_test_accuracy']:.3f} "
                          f"on test, and its validation images chose the calibration")
        if "accuracy" in self.test_scores:
            out += [f"  test accuracy: {spread(self.test_scores['accuracy'])}",
                    f"  test macro-F1: {spread(self.test_scores['macro_f1'])}",
                    f"    {'category':<30}{'precision':>10}{'recall':>10}"]
            for name in sorted(self.per_category_accuracy):
                p, r = self.test_scores["precision"][name]["value"], self.test_scores["recall"][name]["value"]
                out.append(f"    {name:<30}{p:>10.3f}{r if r is not None else float('nan'):>10.3f}")
        else:
            out.append(f"  test accuracy: {self.test_accuracy:.3f}")
        c = self.calibration
        if c:
            out.append(f"  calibration: temperature {c['temperature']:.2f}, expected calibration error on test "
                       f"{c['test_ece_before']:.3f} -> {c['test_ece_after']:.3f}")
            if "temperature_interval_95" in c:   # models registered before it have none
                low, high = c["temperature_interval_95"]
                weak = (": more labelled images, or a larger --validation-fraction, would pin it down"
                        if high / low > WIDE_TEMPERATURE_INTERVAL else "")
                out.append(f"    temperature 95% interval {low:.2f}-{high:.2f} from {c['validation_images']} "
                           f"validation images{weak}")
            share = c.get("test_confident_share")
            out.append(f"  uncertain below confidence {c['uncertain_below_confidence']:.3f} (target "
                       f"{c['uncertain_target_accuracy']:.0%} right among the confident"
                       + (f"; {share:.0%} of test images confident)" if share is not None else ")"))
        return out


def run_training(spark, config: Config, request: TrainRequest) -> TrainResult:
    request.check()
    if request.refit_off_for_architecture:
        log.info("%s", request.refit_off_for_architecture)
    # the defaults resolved once, so that the run's saved request says what it does
    request = dataclasses.replace(request, validation=request.resolved_validation,
                                  refit_with_validation=request.resolved_refit)
    db = config.catalog.database
    ensure_tables(spark, db, TRAIN_TABLES)
    run_id = request.run_id or new_run_id()
    run = registry.run_dir(run_id)
    saved = registry.read_json(run / "request.json")
    if saved is not None:
        # Resuming: the run's own request and split win, whatever else was passed.
        known = {f.name for f in dataclasses.fields(TrainRequest)}  # runs saved by older versions too
        saved.setdefault("refit_with_validation", False)   # saved before the refit existed: not refitted
        request = TrainRequest(**{**{k: v for k, v in saved.items() if k in known},
                                  "scale_bins": tuple(saved["scale_bins"]), "run_id": run_id})
        split = registry.read_json(run / "split.json")
        log.info("resuming run %s after epoch %s", run_id,
                 (registry.read_json(run / "state.json") or {}).get("completed_epochs", 0))
    else:
        problem = unknown_scale_bins(spark, db, request.scale_bins)
        if problem:
            raise TrainError(problem)
        images = labelled_images(spark, db, list(request.scale_bins) or None)
        if len(set(images.labels)) < 2:
            raise TrainError(f"training needs labelled images of at least two categories in {db}.images "
                             f"(found {len(images.image_ids)} labelled images); ingest with --labels")
        parts = make_split(images, seed=request.seed, validation=request.validation, test=request.test)
        if not parts.ids("validation") or not parts.ids("test") or not parts.ids("train"):
            raise TrainError(f"{len(images.image_ids)} labelled images are too few to hold out validation and "
                             "test images: give each category at least three labelled images")
        counts = class_counts(images.class_names, dict(zip(images.image_ids, images.labels)), parts.ids("train"))
        # the labels as read now: a resumed run trains on the same ones whatever is corrected meanwhile
        split = {"class_names": images.class_names, "train": parts.ids("train"), "train_class_counts": counts,
                 "labels": dict(zip(images.image_ids, images.labels)),
                 "validation": parts.ids("validation"), "test": parts.ids("test"),
                 "groups_merged": parts.groups_merged, "images_in_merged_groups": parts.images_in_merged_groups}
        run.mkdir(parents=True, exist_ok=True)
        registry.write_json(run / "split.json", split)
        registry.write_json(run / "request.json", {**dataclasses.asdict(request), "run_id": run_id})
    # the batch and rate this run trains with, from its split (the same again on resume)
    batch = batch_size_for(request.batch_size, len(split["train"]), request.num_proc)
    request = dataclasses.replace(request, batch_size=batch, learning_rate=rate_for_batch(
        request.resolved_learning_rate, batch, rate_requested=bool(request.learning_rate)))
    init = parse_init(request.init)
    init_value = init.value
    if init.kind == "model":
        _, _, folder = registry.resolve(init.value)
        init_value = str(folder / "model.keras")

    if "labels" not in split:   # a run split by a semspark older than sem.labels
        images = labelled_images(spark, db, list(request.scale_bins) or None)
        split["labels"] = dict(zip(images.image_ids, images.labels))
    index = {name: i for i, name in enumerate(split["class_names"])}
    held = [i for side in ("train", "validation", "test") for i in split[side]]
    unlabelled = [i for i in held if split["labels"].get(i) not in index]
    if unlabelled:
        raise TrainError(f"{len(unlabelled)} images of run {run_id}'s split have no label among its classes "
                         f"(e.g. {unlabelled[0]}); start a new run")
    url = dataset_url(config)
    ensure_consistent(spark, config)   # the ranks' Petastorm readers need metadata that names every file
    payload = {**dataclasses.asdict(request), "input_size": request.resolved_input_size, "keep": request.resolved_keep,
               "learning_rate": request.resolved_learning_rate,
               "uncertain_target": request.uncertain_target,
               "train_class_counts": split.get("train_class_counts"), "run_dir": str(run), "dataset_url": url,
               "image_size": _stored_image_size(url), "class_names": split["class_names"],
               "train_ids": split["train"], "validation_ids": split["validation"], "test_ids": split["test"],
               "label_of": {i: index[split["labels"][i]] for i in held},
               "init_kind": init.kind, "init_value": init_value}
    log.info("training %s at %d px (%s, init %s, batch %d and peak learning rate %g per rank) on %d images with %d "
             "Horovod ranks", request.arch, request.resolved_input_size, request.mode, request.init, request.batch_size,
             request.resolved_learning_rate, len(split["train"]), request.num_proc)
    outcome = _train_ranks(spark, payload, request.num_proc, run, run_id, "training")
    if request.resolved_refit:
        outcome = _refit_with_validation(spark, request, run, run_id, split, payload, outcome)
    return _register(spark, db, request, run_id, run, split, outcome)


def class_counts(class_names: list[str], label_of: dict[str, str], image_ids: list[str]) -> dict[str, int]:
    """Images per category among ``image_ids`` (every category named, none of them missing): what the
    balanced class weights of the training that reads these images are computed from."""
    counts = {name: 0 for name in class_names}
    for image_id in image_ids:
        counts[label_of[image_id]] += 1
    return counts


def _refit_with_validation(spark, request: TrainRequest, run, run_id: str, split: dict, payload: dict,
                           first: dict) -> dict:
    """The same recipe trained again, from the same seed and for the same epochs, on the training and
    validation images together (in run/refit, resumed like the first), scored on the test images with
    the temperature and uncertain threshold the first model's validation images chose.

    Why: a temperature fitted on a few dozen validation images is off now and then (a seed of
    Inception-v3 at 0.038 ECE on new images from 64), and holding out more of them costs the model
    training images (about a point of accuracy at 0.2). Refitted, a larger validation share pins the
    temperature down and the registered model loses no training image to it
    (bench/train_quality_bench.py --refit-with-validation; README, "Training quality")."""
    refit_dir = run / "refit"
    refit_dir.mkdir(parents=True, exist_ok=True)
    counts = class_counts(split["class_names"], split["labels"], split["train"] + split["validation"])
    carried = {k: first["calibration"][k] for k in ("temperature", "temperature_interval_95",
                                                      "uncertain_below_confidence", "validation_confident_share",
                                                      "validation_ece_before", "validation_ece_after")}
    refit_payload = {**payload, "run_dir": str(refit_dir), "train_ids": split["train"] + split["validation"],
                     "train_class_counts": counts, "validation_in_training": True, "carried_calibration": carried,
                     "patience": 0, "keep": "last"}
    done = (registry.read_json(refit_dir / "state.json") or {}).get("completed_epochs", 0)
    if done:
        log.info("resuming the refit of run %s after epoch %s", run_id, done)
    log.info("refitting %s on %d training + %d validation images with the temperature %.3f the first model's "
             "validation images chose", request.arch, len(split["train"]), len(split["validation"]),
             carried["temperature"])
    refitted = _train_ranks(spark, refit_payload, request.num_proc, refit_dir, run_id,
                            "refitting on training + validation", " (the first model is trained)")
    first_accuracy = first["test_scores"].get("accuracy", {}).get("value")
    return {**refitted, "kept_checkpoint": "refit/" + refitted["kept_checkpoint"],
            "refit": {"first_model_test_accuracy": first_accuracy,
                      "first_model_test_ece_after": first["calibration"].get("test_ece_after"),
                      "first_model_validation_accuracy": next(
                          h["val_accuracy"] for h in first["history"] if h["epoch"] == first["best_epoch"]),
                      "first_model_train_images": len(split["train"]),
                      "train_images": len(split["train"]) + len(split["validation"])}}


def _train_ranks(spark, payload: dict, num_proc: int, state_dir, run_id: str, what: str, context: str = "") -> dict:
    """Rank 0's outcome of one training (``what``) on the Horovod ranks; a failure says how many
    epochs are checkpointed in ``state_dir`` and how to resume. A training that finished earlier is
    not started again: its outcome (state_dir/outcome.json) is reused while the kept checkpoint, the
    reference embeddings and everything the ranks were given are unchanged."""
    key = _outcome_key(payload)
    earlier = _finished_outcome(state_dir, key)
    if earlier is not None:
        log.info("%s of run %s finished earlier: its evaluation is reused (%s)", what[0].upper() + what[1:],
                 run_id, state_dir / "outcome.json")
        return earlier
    try:
        results = run_ranks(spark, _train, (payload,), num_proc)
    except Exception as exc:
        state = registry.read_json(state_dir / "state.json") or {}
        raise TrainRunFailed(f"{what}{context} failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                             f"{state.get('completed_epochs', 0)} epochs are checkpointed: rerun with "
                             f"--run-id {run_id} to resume") from exc
    outcome = next(r for r in results if r is not None)
    _record_outcome(state_dir, key, outcome)
    return outcome


def _record_outcome(state_dir, key: str, outcome: dict) -> None:
    """state_dir/outcome.json: rank 0's outcome with what it was computed from (_finished_outcome)."""
    registry.write_json(state_dir / "outcome.json", {
        "key": key, "checkpoint_sha256": registry.file_sha256(state_dir / outcome["kept_checkpoint"]),
        "reference_sha256": registry.file_sha256(state_dir / "reference_embeddings.npy"), "outcome": outcome})


def _outcome_key(payload: dict) -> str:
    """What the ranks' outcome is a function of besides the checkpoint: everything they were given
    (the run's saved request wins on a rerun, so a rerun gives the same) and the train stage's code
    (a changed evaluation is not answered by the older one's figures)."""
    code = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        code.update(source.read_bytes())
    return hashlib.sha256(json.dumps({"payload": payload, "code": code.hexdigest()}, sort_keys=True,
                                     default=str).encode()).hexdigest()


def _finished_outcome(state_dir, key: str) -> dict | None:
    """The outcome a finished training of this payload recorded, if its checkpoint and reference
    embeddings are still the ones it was computed from; None means train (or resume) and evaluate."""
    saved = registry.read_json(state_dir / "outcome.json")
    if saved is None or saved.get("key") != key:
        return None
    checkpoint, reference = state_dir / saved["outcome"]["kept_checkpoint"], state_dir / "reference_embeddings.npy"
    if not (checkpoint.exists() and reference.exists()):
        return None
    if registry.file_sha256(checkpoint) != saved["checkpoint_sha256"] or \
            registry.file_sha256(reference) != saved["reference_sha256"]:
        return None
    return saved["outcome"]


def run_ranks(spark, fn, args: tuple, num_proc: int) -> list:
    """``fn(*args)`` in ``num_proc`` Horovod ranks, one per Spark task, as semspark's training runs
    them: over Gloo (its presence asked of a fresh interpreter, not of a fork of this one), each
    rank on the executors' Python; returns the ranks' results in rank order."""
    import horovod.spark

    _check_gloo_without_fork()
    return horovod.spark.run(fn, args=args, num_proc=num_proc, use_gloo=True, verbose=1,
                             executable=_executor_python(spark))


_GLOO_BUILT: bool | None = None


def _check_gloo_without_fork() -> None:
    """Whether this Horovod has Gloo, asked of a fresh interpreter, and that answer given to Horovod.

    horovod.spark.run checks it by forking the driver and importing Horovod's TensorFlow extension
    in the child. Forking a process that has TensorFlow loaded already (a notebook, the test
    session, a driver that ran an analysis) is unsafe: the child crashed once here (a segmentation
    fault inside TensorFlow's import), Horovod read that as "not built with Gloo", and the run failed
    saying so. The same question in a new process costs the same import and cannot crash the driver's
    state; the answer is kept for the life of the process, as Horovod keeps its own.
    """
    global _GLOO_BUILT
    if _GLOO_BUILT is None:
        import sys

        probe = subprocess.run([sys.executable, "-c", "import horovod.tensorflow as h; print(bool(h.gloo_built()))"],
                               capture_output=True, text=True, timeout=600)
        if not (probe.returncode == 0 and probe.stdout.strip().endswith("True")):
            raise TrainError("Horovod on this machine was built without Gloo (or its TensorFlow extension does "
                             f"not load: {(probe.stderr.strip().splitlines() or [''])[-1]}); reinstall it with "
                             "deploy/bootstrap.sh, which builds it with HOROVOD_WITH_GLOO=1")
        _GLOO_BUILT = True
    import horovod.runner.launch
    import horovod.spark.runner

    def answer(verbose=False):
        return _GLOO_BUILT

    horovod.runner.launch.gloo_built = answer
    horovod.spark.runner.gloo_built = answer


def _executor_python(spark) -> str | None:
    """The interpreter Horovod starts each rank with, inside its Spark task.

    Horovod defaults to the driver's sys.executable, which under spark-submit is the submitting
    machine's Python (and its checkout); ranks must run the executors' Python instead: the shipped
    or provisioned environment of spark.pyspark.python (deploy/cluster.sh, conf/spark-gpu.conf).
    """
    return spark.sparkContext.getConf().get("spark.pyspark.python", None) or os.environ.get("PYSPARK_PYTHON")


def _stored_image_size(url: str) -> int:
    """The side of the stored images, from the dataset's own schema: the config may have changed
    since the images were ingested."""
    size = stored_image_size(url)
    if size is None:
        raise TrainError(f"no readable image dataset at {url}: run semspark ingest first")
    return size


def _train(payload):
    from semspark.train.rank import train_on_rank
    return train_on_rank(payload)


def _register(spark, db, request, run_id, run, split, outcome) -> TrainResult:
    import numpy as np

    classes = split["class_names"]
    confusion = np.array(outcome["confusion"])
    per_class = {c: float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else float("nan")
                 for i, c in enumerate(classes)}
    test_accuracy = float(np.trace(confusion) / max(confusion.sum(), 1))
    version, folder = registry.new_version(request.name)
    shutil.copy(run / outcome["kept_checkpoint"], folder / "model.keras")
    # a refitted model's reference embeddings are its own (run/refit)
    reference = run / ("refit" if outcome.get("refit") else "") / "reference_embeddings.npy"
    if reference.exists():
        shutil.copy(reference, folder / registry.REFERENCE_EMBEDDINGS)
    model_version = f"{request.name}/{version}"
    history = outcome["history"]
    best = next(h for h in history if h["epoch"] == outcome["best_epoch"])
    refit = outcome.get("refit")
    # refitted: the model trained on the validation images too, so its validation accuracy is the
    # first model's (the one its calibration was fitted with)
    validation_accuracy = refit["first_model_validation_accuracy"] if refit else best["val_accuracy"]
    train_images = refit["train_images"] if refit else len(split["train"])
    trained_on = split["train"] + split["validation"] if refit else split["train"]
    train_hash = hashlib.sha256("\n".join(trained_on).encode()).hexdigest()
    metadata = {
        "model_version": model_version, "architecture": request.arch, "mode": request.mode,
        "init": request.init, "class_names": classes, "input_size": request.resolved_input_size,
        "recipe": {**{k: getattr(request, k) for k in ("optimizer", "schedule", "warmup_epochs",
                                                        "label_smoothing", "weight_decay", "class_weighting", "mixup",
                                                        "batch_size", "epochs")},
                   "learning_rate": request.resolved_learning_rate},
        "scale_bins": list(request.scale_bins), "split_seed": request.seed, "run_id": run_id,
        "train_images": train_images, "validation_images": len(split["validation"]),
        "test_images": len(split["test"]), "train_image_ids_sha256": train_hash,
        **({"refit_with_validation": refit} if refit else {}),
        "near_duplicate_groups_merged": split["groups_merged"],
        "best_epoch": outcome["best_epoch"], "kept": outcome["kept"],
        "best_validation_epoch": outcome["best_validation_epoch"],
        "validation_accuracy": validation_accuracy,
        "test_accuracy": test_accuracy, "per_category_test_accuracy": per_class,
        "confusion_matrix": confusion.tolist(), "num_proc": request.num_proc,
        "test_scores": outcome.get("test_scores", {}), "calibration": outcome.get("calibration", {}),
        "out_of_distribution": {**outcome.get("out_of_distribution", {}),
                                "appearance": _appearance_of_training_images(spark, db, split["train"]).as_dict(),
                                "reference_sha256": registry.file_sha256(folder / registry.REFERENCE_EMBEDDINGS)
                                if (folder / registry.REFERENCE_EMBEDDINGS).exists() else None},
        "model_sha256": registry.file_sha256(folder / "model.keras"), "git_commit": _git_commit(),
        "trained_at": datetime.now(timezone.utc).isoformat(),
    }
    registry.write_json(folder / "metadata.json", metadata)
    registry.inference_weights(model_version)  # what scoring broadcasts; made once, here
    _write_history(folder / "history.csv", history)
    _figures(folder, history, confusion, classes, model_version)

    row = {"model_version": model_version, "name": request.name, "version": version, "arch": request.arch,
           "mode": request.mode, "init": request.init, "input_size": request.resolved_input_size,
           "classes": ",".join(classes), "scale_bins": ",".join(request.scale_bins),
           "train_images": train_images, "validation_images": len(split["validation"]),
           "test_images": len(split["test"]), "best_epoch": outcome["best_epoch"],
           "validation_accuracy": float(validation_accuracy), "test_accuracy": test_accuracy,
           "num_proc": request.num_proc, "run_id": run_id, "path": str(folder),
           "model_sha256": metadata["model_sha256"], "git_commit": metadata["git_commit"],
           "trained_at": utc_now(), **_calibration_columns(metadata)}
    append_rows(spark, db, MODELS, [row])
    rows = [{"model_version": model_version, "epoch": h["epoch"], "loss": h.get("loss"),
             "accuracy": h.get("accuracy"), "val_accuracy": h.get("val_accuracy"),
             "test_accuracy": h.get("test_accuracy")} for h in history]
    append_rows(spark, db, TRAINING_HISTORY, rows)
    return TrainResult(model_version=model_version, run_id=run_id, path=str(folder),
                       best_epoch=outcome["best_epoch"], test_accuracy=test_accuracy,
                       per_category_accuracy=per_class, train_images=train_images,
                       groups_merged=split["groups_merged"], test_scores=metadata["test_scores"],
                       calibration=metadata["calibration"],
                       kept="the last" if metadata["kept"] == "last" else "best on validation",
                       refit=refit or {})


def _appearance_of_training_images(spark, db: str, train_ids: list[str]):
    """The chroma and contrast bounds of the training images, from sem.images (ingest measured
    them); the out-of-distribution check of inference compares every image with them."""
    from pyspark.sql import functions as F

    from semspark.train.evaluation import AppearanceBounds

    images = spark.table(qualified(db, IMAGES))
    if not {"chroma", "contrast"} <= set(images.columns):   # a catalog of an older semspark: not measured
        return AppearanceBounds()
    ids = spark.createDataFrame([(i,) for i in train_ids], "image_id string")
    row = (images.join(F.broadcast(ids), "image_id", "left_semi")
           .agg(F.max("chroma").alias("chroma"), F.min("contrast").alias("contrast")).first())
    return AppearanceBounds.fit([row["chroma"]], [row["contrast"]])


def _calibration_columns(metadata: dict) -> dict:
    """sem.models' held-out figures from the metadata: macro-F1 on the test images, the temperature
    with its 95% interval, the test ECE before and after it, the confidence below which a
    prediction is uncertain. None where the run recorded none (no validation or test images)."""
    calibration = metadata.get("calibration") or {}
    low, high = calibration.get("temperature_interval_95") or (None, None)
    macro_f1 = (metadata.get("test_scores") or {}).get("macro_f1") or {}
    return {"test_macro_f1": macro_f1.get("value"), "temperature": calibration.get("temperature"),
            "temperature_low": low, "temperature_high": high,
            "test_ece_before": calibration.get("test_ece_before"), "test_ece_after": calibration.get("test_ece_after"),
            "uncertain_below_confidence": calibration.get("uncertain_below_confidence")}


def _write_history(path, history) -> None:
    import csv

    keys = ["epoch", "loss", "accuracy", "val_accuracy", "val_loss", "test_accuracy"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def _figures(folder, history, confusion, classes, title) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("accuracy", "training"), ("val_accuracy", "validation"), ("test_accuracy", "test")):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):   # a refitted model has no validation images
            ax.plot(epochs, [float("nan") if v is None else v for v in values], marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy per epoch", ylim=(0, 1))
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "accuracy.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=f"{title}: test confusion matrix")
    fig.tight_layout()
    fig.savefig(folder / "confusion.png", dpi=110)
    plt.close(fig)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
