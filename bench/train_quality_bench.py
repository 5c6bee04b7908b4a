"""Benchmark of what training learns. Prints one JSON document.

    .venv/bin/python bench/train_quality_bench.py [--archs compact_cnn,alexnet] [--seeds 0,1,2]
        [--images 640] [--epochs E] [--input-px P] [--batch-size B] [--check-images 1000] [--cli-alexnet] [--learning-rate R] [--label-smoothing S]
        [--weight-decay W] [--alexnet-head average|flatten] [--convnext-layout depthwise|keras]
        [--convnext-layer-scale S] [--convnext-drop-path R] [--efficientnet-drop-connect R] [--translation T] [--rotation R]
        [--select last|best] [--ema D] [--validation-fraction V] [--refit-with-validation] [--save-logits DIR]
    .venv/bin/python bench/train_quality_bench.py --paired BASE.json[,...] OTHER.json[@refit][,...]

Per architecture, at a CPU-sized input and a fixed epoch budget (BUDGETS), over several seeds:
the generated categories (semspark.synth.morphology, the images the demo ingests, rendered at
128 px and resized like the stored dataset), split 70/10/20 (``--validation-fraction``: the
validation share, taken from training's), trained in this process with the
product's recipe (train/recipe.py: warm-up then cosine decay, label smoothing, balanced class
weights, decoupled weight decay) and evaluated like the training job does (train/evaluation.py):
test accuracy and macro-F1, training images/s, ECE before and after temperature scaling (and after
it fitted on the validation likelihood alone, without the product's prior on T: the baseline), the
accuracy and ECE on a larger held-out set of the same generator (``--check-images``, another seed),
and the train/inference gap (accuracy on the training images in training mode minus inference mode; the
first release's augmentation made it 0.5).

``--paired`` trains nothing: it pairs the runs of printed results by architecture and seed (e.g.
the same seeds at two ``--validation-fraction`` shares, whose test and check images are the same)
and prints the paired differences of check accuracy and check ECE after calibration.

``--refit-with-validation`` trains each model a second time, from the same seed, on the training
and validation images together, and scores it with the temperature the first model's validation
images chose: a larger validation share then pins the temperature down without costing the final
model training images (at twice the training time). ``--paired BASE.json OTHER.json@refit``
compares those second models with another run's.

``--select best`` keeps the epoch of best validation accuracy, as ``semspark train`` registers,
and calibrates on the same validation images; ``last`` (default) keeps the last epoch.

``--cli-alexnet`` also runs the issue's end-to-end case for real: 300 generated images ingested
into a scratch catalog, ``semspark train --arch alexnet --input-size 128 --epochs 12 --num-proc 2``,
then ``semspark infer``, and compares inference's test accuracy with the one training recorded.

Targets (issue 12): the demo's model (compact_cnn) at least 0.95 test accuracy in no more training
time than the first release's demo (about 3 minutes on 2 cores); every architecture at least 0.9
within its budget; ECE after calibration at most 0.03; the CLI AlexNet at least 0.75. Each seed is
judged on its 1,000 check images when they are measured (``targets``: 128 test images cannot tell
0.89 from 0.9 nor an ECE of 0.03 from 0.05); the JSON keeps the same targets judged on the test
split (``by_test_split``) and on each architecture's mean over its seeds (``mean_over_seeds``, not
deciding). Machines here are noisy: compare within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ingest_bench import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

# architecture: (input px, epochs, batch). AlexNet's 30 epochs: 0.945 to 0.969 test accuracy over
# seeds 0-2 (12 epochs: 0.84 at best), about two minutes of training each; EfficientNetV2-S's 90
# (without stochastic depth): 0.914 on seed 2, the one seed under 0.9 at 60 epochs (0.906, 0.906,
# 0.883), about nine minutes; Inception-v3's 120: 0.945 to 0.984 over seeds 0-2; Inception-v4's
# 240: 0.914 (seed 0; 0.867 at 150, still fitting its training images), about 80 minutes on a
# shared Intel Xeon; ConvNeXt-Tiny at 128 px (its stride-4 stem leaves 4x4 maps at the last stage,
# 2x2 at 64 px): 0.891, 0.969, 0.930 (seeds 0-2; 0.928, 0.933, 0.930 on 1,000 check images, where
# 64 px made 0.895), about 50 minutes alone; Inception-v4 at 107 px and 90 epochs: 0.922, 0.938, 0.930
# (seeds 0-2; check 0.919, 0.908, 0.906), about 20 minutes alone (README, "Training quality").
BUDGETS = {"compact_cnn": (64, 25, 32), "alexnet": (128, 30, 32), "convnext_tiny": (128, 120, 32),
           "efficientnetv2_s": (64, 90, 32), "inception_v3": (75, 120, 32), "inception_v4": (107, 90, 32),
           "inception_resnet_v2": (75, 90, 32)}


KERAS_LAYOUT = False   # --convnext-layout keras: Keras' grouped convolutions (and layer scale 1e-6)


def images(n: int, seed: int):
    import numpy as np

    from semspark.synth.morphology import CATEGORIES, render

    rng = np.random.default_rng(seed)
    x = np.stack([(render(CATEGORIES[i % 10], rng, 128, 128) * 255).astype(np.uint8) for i in range(n)])
    y = np.arange(n) % 10
    order = rng.permutation(n)
    return x[order], y[order]


def ece_floor(probabilities, seed: int, draws: int = 200) -> float:
    """The ECE a perfectly calibrated model with these probabilities shows on this many images, by
    chance: the mean over ``draws`` of the ECE against labels drawn from the probabilities themselves.
    An ECE near it is calibration the sample cannot tell from perfect."""
    import numpy as np

    from semspark.train.evaluation import expected_calibration_error

    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(probabilities, axis=1)
    values = []
    for _ in range(draws):
        drawn = (rng.random((len(probabilities), 1)) > cumulative).sum(axis=1).clip(0, probabilities.shape[1] - 1)
        values.append(expected_calibration_error(probabilities, drawn))
    return float(np.mean(values))


VALIDATION = 0.1  # --validation-fraction V: the share held out for validation (`semspark train`'s flag)
EMA = 0.0         # --ema D: evaluate an exponential moving average of the weights (recipe.WeightAverage)
SELECT = "last"   # --select best: the epoch `semspark train` registers (best on validation), not the last
REFIT = False     # --refit-with-validation: also train on training + validation, scored with the first model's T
SAVE_LOGITS: Path | None = None   # --save-logits DIR: each run's held-out logits and labels, ARCH-sSEED.npz


def _keep_best_on_validation():
    import tensorflow as tf

    from semspark.train.rank import better_than_best

    class KeepBestOnValidation(tf.keras.callbacks.Callback):
        """The weights of the epoch the training job would register: the best on validation
        (accuracy, then loss; train/rank.py's rule)."""

        def __init__(self, x, y):
            super().__init__()
            self.x, self.y, self.best, self.weights, self.epoch = x, y, None, None, 0

        def on_epoch_end(self, epoch, logs=None):
            scores = self.model.evaluate(self.x, self.y, verbose=0, return_dict=True)
            if better_than_best(scores["accuracy"], scores["loss"], self.best):
                self.best = {"val_accuracy": scores["accuracy"], "val_loss": scores["loss"]}
                self.weights, self.epoch = self.model.get_weights(), epoch + 1
    return KeepBestOnValidation


def run_one(arch: str, seed: int, n: int, overrides: dict | None = None, check: int = 0) -> dict:
    import numpy as np
    import tensorflow as tf

    from semspark.train.evaluation import (OutOfDistribution, expected_calibration_error, fit_temperature,
                                           held_out_scores, softmax)
    from semspark.train.models import build_model
    from semspark.train.recipe import (DecoupledWeightDecay, Recipe, SmoothedSparseCrossentropy, class_weights,
                                       learning_rate_schedule, make_optimizer, mix_batches_in_training, WeightAverage)
    from semspark.train.spec import learning_rate_for, rate_for_batch

    KeepBestOnValidation = _keep_best_on_validation()
    size, epochs, batch = BUDGETS[arch]
    x, y = images(n, seed)
    x = tf.image.resize(x[..., None].astype("float32"), (size, size), antialias=True).numpy()
    # the test images are the last fifth whatever the validation share, so that runs at two shares
    # are judged on the same images; a larger validation share takes its images from training's
    a, b = int(round((0.8 - VALIDATION) * n)), int(0.8 * n)
    train, validation, test = slice(0, a), slice(a, b), slice(b, n)
    # the architecture's own rate moved to this batch, as `semspark train` does, unless one is given
    recipe = Recipe(**{"learning_rate": rate_for_batch(learning_rate_for(arch), batch, False), **(overrides or {})})

    def fit(trained: slice, keep_best: bool):
        """A model built and trained from this seed on the images of ``trained``, with the recipe;
        the weights evaluated (last, best on validation or averaged) are put in place."""
        tf.keras.utils.set_random_seed(seed)
        count = trained.stop - trained.start
        steps = int(np.ceil(count / batch))
        model = build_model(arch, 10, size, keras_layout=KERAS_LAYOUT)
        loss = SmoothedSparseCrossentropy(10, recipe.label_smoothing)
        model.compile(make_optimizer(recipe, learning_rate_schedule(recipe.learning_rate, recipe.schedule,
                                                                    recipe.warmup_epochs * steps, epochs * steps)),
                      loss, metrics=["accuracy"])
        mix_batches_in_training(model, loss, recipe.mixup, seed)
        counts = {int(c): int((y[trained] == c).sum()) for c in range(10)}
        callbacks = [DecoupledWeightDecay(recipe.weight_decay)]
        average = WeightAverage(EMA) if EMA else None
        if average:
            callbacks.append(average)
        kept = KeepBestOnValidation(x[validation], y[validation]) if keep_best else None
        started = time.perf_counter()
        history = model.fit(x[trained], y[trained], batch_size=batch, epochs=epochs, verbose=0,
                            class_weight=class_weights(counts, recipe), callbacks=callbacks + ([kept] if kept else []))
        seconds = time.perf_counter() - started
        if kept:
            model.set_weights(kept.weights)
        elif average:
            average.swap()   # the averaged weights are the model evaluated
        return model, history, seconds, kept

    model, history, seconds, kept = fit(train, SELECT == "best")
    heads = tf.keras.Model(model.inputs, model.get_layer("logits").output)
    logits = {k: heads.predict(x[s], verbose=0) for k, s in (("train", train), ("validation", validation), ("test", test))}
    scores = held_out_scores(y[test], logits["test"].argmax(1), [str(c) for c in range(10)], seed=seed)
    temperature = fit_temperature(logits["validation"], y[validation])
    # the baseline: the validation images' likelihood alone, without the prior on T
    temperature_likelihood_only = fit_temperature(logits["validation"], y[validation], prior_scale=None)
    # a call in training mode moves every batch normalisation's moving statistics one step towards
    # this batch's: put them back, or the check images below meet another model than the test
    # images above did (before 2026-12-04 they did: the check figures until then carry that step)
    evaluated_weights = model.get_weights()
    training_mode = float(np.mean(np.argmax(model(x[train], training=True).numpy(), 1) == y[train]))
    model.set_weights(evaluated_weights)
    inference_mode = float(np.mean(logits["train"].argmax(1) == y[train]))
    checked = {}
    if check:
        # a larger held-out set of the same generator (another seed, never trained on): with 128
        # test images one error is 0.8% and the ECE estimate alone has a standard error of ~0.02
        xc, yc = images(check, seed + 1000)
        xc = tf.image.resize(xc[..., None].astype("float32"), (size, size), antialias=True).numpy()
        check_logits = heads.predict(xc, verbose=0)
        checked = {"check_images": check,
                   "check_accuracy": round(float(np.mean(check_logits.argmax(1) == yc)), 4),
                   "check_ece_before": round(expected_calibration_error(softmax(check_logits), yc), 4),
                   "check_ece_after": round(expected_calibration_error(softmax(check_logits, temperature), yc), 4),
                   "check_ece_floor_after": round(ece_floor(softmax(check_logits, temperature), seed), 4),
                   "check_ece_after_likelihood_only": round(
                       expected_calibration_error(softmax(check_logits, temperature_likelihood_only), yc), 4)}
        # the temperature the check images themselves would choose: what temperature scaling can
        # reach on this model at best, so that a high ECE after calibration tells the few
        # validation images' noisy fit apart from a miscalibration one temperature cannot mend
        best_possible = fit_temperature(check_logits, yc, prior_scale=None)
        checked.update({"check_temperature": round(best_possible, 3),
                        "check_ece_at_check_temperature": round(
                            expected_calibration_error(softmax(check_logits, best_possible), yc), 4)})
    if SAVE_LOGITS:
        # what a calibration method is fitted on and judged by, so that methods can be compared on
        # the same trained models without training them again
        SAVE_LOGITS.mkdir(parents=True, exist_ok=True)
        # and the validation images' eight quarter-turn and flip views (the orbit training augments
        # over), to try fitting the temperature on them
        views = np.stack([heads.predict(np.rot90(np.flip(x[validation], 2) if flip else x[validation], k, (1, 2)),
                                        verbose=0) for flip in (False, True) for k in range(4)])
        np.savez(SAVE_LOGITS / f"{arch}-s{seed}.npz", validation=logits["validation"], validation_truth=y[validation],
                 validation_views=views, test=logits["test"], test_truth=y[test],
                 **({"check": check_logits, "check_truth": yc} if check else {}))
    refitted = {}
    if REFIT:
        # the recipe trained again from the same seed on the training and validation images together,
        # scored with the temperature the first model's validation images chose: whether the
        # temperature a larger validation share pins down carries over to a model that loses no
        # training images to it
        refit, refit_history, refit_seconds, _ = fit(slice(0, b), False)
        refit_heads = tf.keras.Model(refit.inputs, refit.get_layer("logits").output)
        refit_test = refit_heads.predict(x[test], verbose=0)
        refitted = {"train_images": b, "train_seconds": round(refit_seconds, 1),
                    "test_accuracy": round(float(np.mean(refit_test.argmax(1) == y[test])), 4),
                    "ece_after": round(expected_calibration_error(softmax(refit_test, temperature), y[test]), 4),
                    "final_training_accuracy": round(float(refit_history.history["accuracy"][-1]), 4)}
        if check:
            refit_check = refit_heads.predict(xc, verbose=0)
            own = fit_temperature(refit_check, yc, prior_scale=None)
            # the out-of-distribution threshold as `semspark train` sets it (1.5 times the largest
            # distance of a validation image to the training images' embeddings): the refitted model
            # has trained on its validation images, so its threshold is measured on images it has seen
            # (against a reference of the first model's training images only). The share of the check
            # images (new, but of the training images' kind) each model flags is what that costs.
            def flagged(m, trained_reference: slice):
                embed = tf.keras.Model(m.inputs, m.get_layer("embedding").output)
                ood = OutOfDistribution.fit(embed.predict(x[trained_reference], verbose=0),
                                            embed.predict(x[validation], verbose=0), seed=seed)
                return round(float(np.mean(ood.distances(embed.predict(xc, verbose=0)) > ood.threshold)), 4)
            refitted.update({"check_flagged_out_of_distribution": flagged(refit, train),
                             "first_model_check_flagged_out_of_distribution": flagged(model, train)})
            refitted.update({
                "check_accuracy": round(float(np.mean(refit_check.argmax(1) == yc)), 4),
                "check_ece_before": round(expected_calibration_error(softmax(refit_check), yc), 4),
                "check_ece_after": round(expected_calibration_error(softmax(refit_check, temperature), yc), 4),
                "check_temperature": round(own, 3),
                "check_ece_at_check_temperature": round(expected_calibration_error(softmax(refit_check, own), yc), 4)})
    return {"arch": arch, "seed": seed, "input_px": size, "epochs": epochs, "train_images": a,
            "validation_images": b - a, "train_seconds": round(seconds, 1),
            "train_images_per_s": round(a * epochs / seconds, 1),
            "test_accuracy": round(scores["accuracy"]["value"], 4),
            "test_accuracy_95": [round(scores["accuracy"]["low"], 4), round(scores["accuracy"]["high"], 4)],
            "macro_f1": round(scores["macro_f1"]["value"], 4),
            "ece_before": round(expected_calibration_error(softmax(logits["test"]), y[test]), 4),
            "ece_after": round(expected_calibration_error(softmax(logits["test"], temperature), y[test]), 4),
            "ece_floor_after": round(ece_floor(softmax(logits["test"], temperature), seed), 4),
            "temperature": round(temperature, 3),
            "temperature_likelihood_only": round(temperature_likelihood_only, 3),
            "ece_after_likelihood_only": round(
                expected_calibration_error(softmax(logits["test"], temperature_likelihood_only), y[test]), 4),
            "train_minus_inference_accuracy_on_training_images": round(training_mode - inference_mode, 4),
            "final_training_accuracy": round(float(history.history["accuracy"][-1]), 4),
            # the learning curve, to tell a model still fitting at its last epoch from one that stalled
            "training_accuracy_every_10_epochs": [round(float(v), 3) for v in history.history["accuracy"][9::10]],
            "kept_epoch": kept.epoch if kept else epochs,
            "validation_accuracy_of_kept": round(float(np.mean(logits["validation"].argmax(1) == y[validation])), 4),
            **checked, **({"refit_on_train_and_validation": refitted} if refitted else {})}


def cli_alexnet(seed: int) -> dict:
    """The issue's end-to-end case through the real commands, in a scratch SEMSPARK_HOME."""
    home = Path(tempfile.mkdtemp(prefix="semspark-quality-"))
    env = {**os.environ, "SEMSPARK_HOME": str(home)}
    semspark = [str(ROOT / ".venv" / "bin" / "semspark")]
    raw = home / "raw"
    subprocess.run(semspark + ["synth", "--out", str(raw), "--n", "300", "--seed", str(seed)], env=env, check=True,
                   capture_output=True)
    subprocess.run(semspark + ["ingest", "--input", str(raw), "--labels", "folders"], env=env, check=True,
                   capture_output=True)
    started = time.perf_counter()
    subprocess.run(semspark + ["train", "--arch", "alexnet", "--input-size", "128", "--epochs", "12", "--num-proc", "2",
                               "--name", "alex"], env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    subprocess.run(semspark + ["infer", "--model", "alex/1"], env=env, check=True, capture_output=True)
    metadata = json.loads((home / "models" / "alex" / "1" / "metadata.json").read_text())
    run = json.loads((home / "runs" / metadata["run_id"] / "split.json").read_text())
    test_ids = "','".join(run["test"])
    query = ("SELECT avg(CAST(p.category = i.label AS INT)) AS accuracy FROM sem.predictions p JOIN sem.current_labels i "
             f"USING (image_id) WHERE p.model_version = 'alex/1' AND p.image_id IN ('{test_ids}')")
    printed = subprocess.run(semspark + ["sql", query, "--format", "json"], env=env, check=True,
                             capture_output=True, text=True).stdout
    inferred = json.loads(printed.strip().splitlines()[-1])["accuracy"] if printed.strip() else None
    refit = metadata.get("refit_with_validation") or {}   # semspark train's default: refitted
    return {"seed": seed, "train_seconds": round(seconds, 1), "recorded_test_accuracy": metadata["test_accuracy"],
            "inference_test_accuracy": inferred, "train_images": metadata["train_images"],
            "test_images": metadata["test_images"], "first_model_test_accuracy": refit.get("first_model_test_accuracy"),
            "test_ece_before": round(metadata["calibration"]["test_ece_before"], 4),
            "test_ece_after": round(metadata["calibration"]["test_ece_after"], 4), "home": str(home)}


def accuracy_target(arch: str) -> float:
    return 0.95 if arch == "compact_cnn" else 0.9


def targets(summary: dict, check_images: int) -> dict:
    """Issue 12's targets, each seed judged on its held-out images. Where the check images were
    measured (``--check-images``, 1,000 by default) they decide: on each seed's 128 test images one
    error is 0.8 points and a model truly at 0.93 shows under 0.9 about one time in ten, and a
    perfectly calibrated model shows an ECE of 0.03 to 0.05 by chance (``ece_floor_after``); on
    1,000 images the 95% interval of an accuracy is about 1.6 points either way and the floor 0.01
    to 0.02. The check images are generated with another seed and never trained on, validated on
    or calibrated on. ``by_test_split`` keeps the same targets judged on the 128 test images."""
    on_check = bool(check_images)
    accuracy_key, ece_key = ("min_check_accuracy", "max_check_ece_after") if on_check else ("min_test_accuracy",
                                                                                            "max_ece_after")
    decided = {"decided_on": f"{check_images} check images a seed" if on_check else "the test split"}
    by_test, seeds_mean = {}, {}
    for arch, s in summary.items():
        decided[f"{arch} accuracy >= {accuracy_target(arch)} on every seed"] = s[accuracy_key] >= accuracy_target(arch)
        decided[f"{arch} ECE after calibration <= 0.03 on every seed"] = s[ece_key] <= 0.03
        # the other reading of "over 3 seeds": the architecture's mean. Not what decides: printed
        # because one seed's ECE moves by about 0.01 with which 64 validation images it drew
        mean_accuracy, mean_ece = (("mean_check_accuracy", "mean_check_ece_after") if on_check
                                   else ("mean_test_accuracy", "mean_ece_after"))
        seeds_mean[f"{arch} mean accuracy >= {accuracy_target(arch)}"] = s[mean_accuracy] >= accuracy_target(arch)
        seeds_mean[f"{arch} mean ECE after calibration <= 0.03"] = s[mean_ece] <= 0.03
        by_test[f"{arch} test accuracy >= {accuracy_target(arch)} on every seed"] = (
            s["min_test_accuracy"] >= accuracy_target(arch))
        by_test[f"{arch} test ECE after calibration <= 0.03 on every seed"] = s["max_ece_after"] <= 0.03
    if "compact_cnn" in summary:
        # the first release's demo trained for about 3 minutes on 2 cores
        decided["compact_cnn training <= 180 s on every seed"] = summary["compact_cnn"]["max_train_seconds"] <= 180
    decided["mean_over_seeds"] = seeds_mean
    if on_check:
        decided["by_test_split"] = by_test
    return decided


def paired(base_files: list[Path], other_files: list[Path]) -> dict:
    """Runs of two printed results (e.g. at two --validation-fraction shares) paired by architecture
    and seed: per pair the check accuracy and check ECE after calibration of both, then the mean
    difference (other minus base) of each with the 95% interval of the paired differences (t), and
    how many pairs are lower in the other. Trains nothing."""
    import numpy as np
    from scipy import stats

    def runs(files):
        found = {}
        for f in files:
            # FILE@refit: the models trained again on training + validation (--refit-with-validation);
            # only that suffix is read, so a path may itself hold an "@"
            name, model = str(f), ""
            if name.endswith("@refit"):
                name, model = name[:-len("@refit")], "refit"
            if not Path(name).is_file():
                raise SystemExit(f"--paired: no file {name} (FILE, or FILE@refit for the refitted models)")
            result = json.loads(Path(name).read_text())
            for r in result["runs"]:
                if model == "refit":
                    if "refit_on_train_and_validation" not in r:
                        raise SystemExit(f"--paired: {name} was not run with --refit-with-validation")
                    r = {**r, **r["refit_on_train_and_validation"]}
                found[(r["arch"], r["seed"])] = {**r, "validation_fraction": result.get("validation_fraction", 0.1),
                                                 "model": model or "first"}
        return found

    base, other = runs(base_files), runs(other_files)
    keys = sorted(set(base) & set(other))
    if not keys or any("check_accuracy" not in base[k] or "check_accuracy" not in other[k] for k in keys):
        raise SystemExit("--paired needs runs of the same architecture and seed, measured with --check-images")
    pairs = [{"arch": a, "seed": s, **{f"{m}_{side}": run[(a, s)].get(m) for side, run in (("base", base), ("other", other))
                                       for m in ("check_accuracy", "check_ece_after", "validation_images",
                                                                 "train_images", "model")}}
             for a, s in keys]

    def summary(metric: str, rows: list[dict]) -> dict:
        d = np.array([r[f"{metric}_other"] - r[f"{metric}_base"] for r in rows])
        half = (stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        return {"mean_difference": round(float(d.mean()), 4),
                "difference_95": [round(float(d.mean() - half), 4), round(float(d.mean() + half), 4)],
                "lower_in_other": int((d < 0).sum()), "pairs": len(d)}

    by_arch = {a: [r for r in pairs if r["arch"] == a] for a in sorted({r["arch"] for r in pairs})}
    return {"benchmark": "training quality, paired runs", "pairs": pairs,
            "check_accuracy": {"all": summary("check_accuracy", pairs),
                               **{a: summary("check_accuracy", rows) for a, rows in by_arch.items()}},
            "check_ece_after": {"all": summary("check_ece_after", pairs),
                                "over_0.03_base": sum(r["check_ece_after_base"] > 0.03 for r in pairs),
                                "over_0.03_other": sum(r["check_ece_after_other"] > 0.03 for r in pairs)}}


def main() -> None:
    if sys.argv[1:2] == ["--paired"]:
        # --paired BASE.json[,BASE.json...] OTHER.json[,OTHER.json...]: compare printed results
        if len(sys.argv) != 4:
            raise SystemExit("usage: train_quality_bench.py --paired BASE.json[,...] OTHER.json[,...]")
        print(json.dumps(paired([Path(f) for f in sys.argv[2].split(",")], [Path(f) for f in sys.argv[3].split(",")]),
                         indent=2))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="compact_cnn", help=f"comma-separated, of {', '.join(BUDGETS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--epochs", type=int, help="override every architecture's epoch budget (BUDGETS)")
    parser.add_argument("--input-px", type=int, help="override every architecture's input size (BUDGETS)")
    parser.add_argument("--batch-size", type=int, help="override every architecture's batch (BUDGETS)")
    parser.add_argument("--check-images", type=int, default=1000,
                        help="a larger held-out set (another generator seed) for accuracy and ECE; 0: none")
    parser.add_argument("--cli-alexnet", action="store_true", help="also the end-to-end AlexNet case (slow)")
    parser.add_argument("--label-smoothing", type=float, help="override the recipe's (0.1)")
    parser.add_argument("--weight-decay", type=float, help="override the recipe's (1e-4)")
    parser.add_argument("--class-weights", choices=("balanced", "none"), help="override the recipe's")
    parser.add_argument("--learning-rate", type=float, help="override the architecture's default peak rate")
    parser.add_argument("--mixup", type=float, help="mixup's Beta alpha (the recipe's: 0, off)")
    parser.add_argument("--alexnet-head", choices=("average", "flatten"),
                        help="AlexNet's last map averaged (semspark's) or flattened (the original's)")
    parser.add_argument("--convnext-layout", choices=("depthwise", "keras"), default="depthwise",
                        help="keras: ConvNeXt's 7x7 convolutions as Keras builds them (grouped; about a tenth "
                             "of the training images/s on a CPU) and its layer scale at 1e-6")
    parser.add_argument("--convnext-layer-scale", type=float,
                        help="ConvNeXt's layer scale at random initialisation (semspark's 0.1; Keras' 1e-6)")
    parser.add_argument("--convnext-drop-path", type=float,
                        help="ConvNeXt's stochastic depth at its last block (semspark's default: models.CONVNEXT_DROP_PATH_RATE)")
    parser.add_argument("--efficientnet-drop-connect", type=float,
                        help="EfficientNetV2's stochastic depth at its last block (semspark's default: "
                             "models.EFFICIENTNET_DROP_CONNECT_RATE)")
    parser.add_argument("--rotation", type=float,
                        help="a random rotation by up to this share of a full turn either way (semspark's default: "
                             "models.ROTATION, 0: off)")
    parser.add_argument("--translation", type=float,
                        help="a random shift of up to this share of the side (semspark's default: models.TRANSLATION)")
    parser.add_argument("--select", choices=("last", "best"), default="last",
                        help="the model evaluated: the last epoch's (default) or the best on validation, as "
                             "`semspark train` registers it (its calibration is then fitted on the images that chose it)")
    parser.add_argument("--ema", type=float, default=0.0,
                        help="evaluate the exponential moving average of the weights with this decay (0: off)")
    parser.add_argument("--validation-fraction", type=float, default=0.1,
                        help="the share of the images held out for validation (temperature, uncertain threshold); "
                             "taken from the training images, the test images stay the last fifth")
    parser.add_argument("--refit-with-validation", action="store_true",
                        help="also train each model again on the training and validation images together and "
                             "score it with the temperature the first model's validation images chose "
                             "(refit_on_train_and_validation; compare with --paired FILE@refit)")
    parser.add_argument("--save-logits", type=Path,
                        help="a folder for each run's validation (and its eight quarter-turn and flip views), "
                             "test and check logits with their labels (ARCH-sSEED.npz), to compare calibration "
                             "methods on the same models")
    args = parser.parse_args()
    global SELECT, EMA, SAVE_LOGITS, VALIDATION, REFIT
    SELECT, EMA, SAVE_LOGITS, VALIDATION = args.select, args.ema, args.save_logits, args.validation_fraction
    REFIT = args.refit_with_validation
    if REFIT and SELECT == "best":
        parser.error("--refit-with-validation trains on the validation images: no epoch is left to choose by them "
                     "(use --select last)")
    if not 0 < VALIDATION <= 0.4:
        parser.error("--validation-fraction must be over 0 and at most 0.4 (the test split takes 0.2)")
    from semspark.train import models
    if args.translation is not None:
        models.TRANSLATION = args.translation
    if args.rotation is not None:
        models.ROTATION = args.rotation
    global KERAS_LAYOUT
    KERAS_LAYOUT = args.convnext_layout == "keras"
    if args.alexnet_head:
        models.ALEXNET_HEAD = args.alexnet_head
    if args.convnext_layer_scale is not None:
        models.CONVNEXT_LAYER_SCALE_INIT = args.convnext_layer_scale
    if args.convnext_drop_path is not None:
        models.CONVNEXT_DROP_PATH_RATE = args.convnext_drop_path
    if args.efficientnet_drop_connect is not None:
        models.EFFICIENTNET_DROP_CONNECT_RATE = args.efficientnet_drop_connect
    seeds = [int(s) for s in args.seeds.split(",")]
    for arch, (size, epochs, batch) in list(BUDGETS.items()):
        BUDGETS[arch] = (args.input_px or size, args.epochs or epochs, args.batch_size or batch)
    overrides = {k: v for k, v in (("label_smoothing", args.label_smoothing), ("weight_decay", args.weight_decay),
                                   ("class_weighting", args.class_weights),
                                   ("learning_rate", args.learning_rate), ("mixup", args.mixup)) if v is not None}
    runs = []
    for arch in args.archs.split(","):
        for seed in seeds:
            runs.append(run_one(arch, seed, args.images, overrides, args.check_images))
            # each finished model on stderr at once: a run of hours is read (or survives a cut) seed by seed
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    result = {"benchmark": "training quality", "machine": {"cpu": cpu_model(),
                                                           "cores": os.cpu_count(), "python": platform.python_version()},
              "images": args.images, "validation_fraction": VALIDATION, "recipe_overrides": overrides, "select": args.select, "ema": args.ema,
              "refit_with_validation": REFIT,
              "model_overrides": {"alexnet_head": models.ALEXNET_HEAD, "convnext_layout": args.convnext_layout,
                                  "convnext_layer_scale_init": 1e-6 if KERAS_LAYOUT else models.CONVNEXT_LAYER_SCALE_INIT,
                                  "convnext_drop_path": 0.0 if KERAS_LAYOUT else models.CONVNEXT_DROP_PATH_RATE,
                                  "efficientnet_drop_connect": models.EFFICIENTNET_DROP_CONNECT_RATE,
                                  "translation": models.TRANSLATION, "rotation": models.ROTATION},
              "runs": runs}
    by_arch: dict = {}
    for r in runs:
        by_arch.setdefault(r["arch"], []).append(r)
    def summarise(by_arch: dict) -> dict:
        return {arch: {"min_test_accuracy": min(r["test_accuracy"] for r in rs),
                       "mean_test_accuracy": round(sum(r["test_accuracy"] for r in rs) / len(rs), 4),
                       "max_ece_after": max(r["ece_after"] for r in rs),
                       "mean_ece_after": round(sum(r["ece_after"] for r in rs) / len(rs), 4),
                       **({"min_check_accuracy": min(r["check_accuracy"] for r in rs),
                           "mean_check_accuracy": round(sum(r["check_accuracy"] for r in rs) / len(rs), 4),
                           "max_check_ece_after": max(r["check_ece_after"] for r in rs),
                           "mean_check_ece_after": round(sum(r["check_ece_after"] for r in rs) / len(rs), 4)}
                          if args.check_images else {}),
                       "max_train_seconds": max(r["train_seconds"] for r in rs),
                       "mean_train_seconds": round(sum(r["train_seconds"] for r in rs) / len(rs), 1)}
                for arch, rs in by_arch.items()}
    result["summary"] = summarise(by_arch)
    result["targets"] = targets(result["summary"], args.check_images)
    if REFIT:
        # the same targets judged on the refitted models (each with the first model's temperature);
        # their training time is both trainings'
        refitted = {arch: [{**r["refit_on_train_and_validation"], "train_seconds": r["train_seconds"]
                            + r["refit_on_train_and_validation"]["train_seconds"]} for r in rs]
                    for arch, rs in by_arch.items()}
        result["refit_summary"] = summarise(refitted)
        result["refit_targets"] = targets(result["refit_summary"], args.check_images)
    if args.cli_alexnet:
        cases = [cli_alexnet(seed) for seed in seeds]
        result["cli_alexnet_128px_12_epochs_300_images"] = cases
        result["targets"]["cli alexnet >= 0.75"] = all(c["recorded_test_accuracy"] >= 0.75 for c in cases)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
