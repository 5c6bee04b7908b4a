"""`semspark models list` and `semspark models compare A B ...`: registered models side by side.

``compare`` draws the test accuracy per epoch of several runs on one plot (the paper's Figures 1
and 2, for the user's own runs) and prints their held-out scores with their 95% intervals. It reads
the registry only (metadata.json and history.csv of each version): no Spark, no TensorFlow.
"""
from __future__ import annotations

import csv
from pathlib import Path

from semspark import registry


def _history(folder: Path) -> list[dict]:
    path = folder / "history.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in csv.DictReader(fh)]


def _spread(scores: dict, key: str) -> str:
    score = scores.get(key)
    if not isinstance(score, dict):
        return "-"
    return f"{score['value']:.3f} [{score['low']:.3f}, {score['high']:.3f}]"


def list_models() -> list[str]:
    """One line per registered version: architecture, input size, test accuracy, calibration."""
    root = registry.models_root()
    lines = [f"{'model':<24}{'arch':<22}{'px':>5}  {'test accuracy [95%]':<26}{'ECE after':>10}  trained at"]
    if not root.is_dir():
        return lines
    for name in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for number in registry.versions(name):
            metadata = registry.read_json(root / name / str(number) / "metadata.json") or {}
            scores = metadata.get("test_scores") or {}
            accuracy = _spread(scores, "accuracy") if scores.get("accuracy") else f"{metadata.get('test_accuracy', float('nan')):.3f}"
            ece = (metadata.get("calibration") or {}).get("test_ece_after")
            lines.append(f"{name + '/' + str(number):<24}{metadata.get('architecture', '?'):<22}"
                         f"{metadata.get('input_size', 0):>5}  {accuracy:<26}"
                         f"{(f'{ece:.3f}' if ece is not None else '-'):>10}  {metadata.get('trained_at', '')[:19]}")
    return lines


def compare_models(specs: list[str], out: str | None = None) -> tuple[list[str], Path]:
    """A table of the models' held-out scores and one plot of their test accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if len(specs) < 1:
        raise registry.RegistryError("give at least one model to compare (NAME/VERSION or NAME/latest)")
    models = []
    for spec in specs:
        name, number, folder = registry.resolve(spec)
        models.append((f"{name}/{number}", folder, registry.read_json(folder / "metadata.json") or {}))
    lines = [f"{'model':<16}{'arch':<20}{'px':>5}{'epochs':>7}  {'test accuracy [95%]':<26}"
             f"{'macro-F1 [95%]':<26}{'ECE before -> after':<20}{'temperature [95%]':<20}"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for version, folder, metadata in models:
        history = _history(folder)
        scores = metadata.get("test_scores") or {}
        calibration = metadata.get("calibration") or {}
        ece = (f"{calibration['test_ece_before']:.3f} -> {calibration['test_ece_after']:.3f}"
               if "test_ece_after" in calibration else "-")
        interval = calibration.get("temperature_interval_95")   # models registered before it have none
        temperature = (f"{calibration['temperature']:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval
                       else f"{calibration['temperature']:.2f}" if "temperature" in calibration else "-")
        lines.append(f"{version:<16}{metadata.get('architecture', '?'):<20}{metadata.get('input_size', 0):>5}"
                     f"{len(history):>7}  {_spread(scores, 'accuracy'):<26}{_spread(scores, 'macro_f1'):<26}{ece:<20}{temperature:<20}")
        epochs = [h["epoch"] for h in history]
        label = f"{version} ({metadata.get('architecture', '?')}, {metadata.get('mode', '?')})"
        ax.plot(epochs, [h.get("test_accuracy") for h in history], marker="o", markersize=3, label=label)
    ax.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1), title="test accuracy per epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    target = Path(out) if out else registry.models_root() / f"compare-{'-'.join(v.replace('/', '.') for v, _, _ in models)}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    lines.append(f"test accuracy per epoch: {target}")
    return lines, target
