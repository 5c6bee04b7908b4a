"""The analysis report: Figures 3 to 6 of the paper for the user's data, a gallery of the largest
clusters, metrics as JSON, and one HTML page that shows them with the key numbers."""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from semspark.analysis.study import StudyResult, pairwise

COLOURS = {"single": "tab:brown", "complete": "tab:cyan", "centroid": "tab:red", "ward": "tab:blue",
           "density_peaks": "tab:pink"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_intrinsic_dimension(result: StudyResult, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for points, colour, name in ((result.scale_before, "tab:green", f"features ({result.input_dim})"),
                                 (result.scale_after, "tab:red", f"autoencoder codes ({result.coding_dim})")):
        xs = [p.points for p in points]
        ax.errorbar(xs, [p.mean for p in points], yerr=[p.std for p in points], color=colour, marker="o",
                    capsize=3, label=name)
    ax.set_xscale("log")
    ax.set(xlabel="number of points", ylabel="2-NN intrinsic dimension",
           title="Intrinsic dimension against scale (Figure 3)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _category_ticks(ax, labels: list[str]) -> None:
    edges = [0] + [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]] + [len(labels)]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    ax.set_xticks(centres, [labels[a] for a in edges[:-1]], rotation=70, fontsize=6)
    ax.set_yticks(centres, [labels[a] for a in edges[:-1]], fontsize=6)


def figure_discrete(result: StudyResult, path: Path) -> None:
    plt = _plt()
    labels = result.heatmap_labels
    discrete = np.array([[a != b for b in labels] for a in labels], dtype=float)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(discrete, cmap="gray", interpolation="nearest")
    _category_ticks(ax, labels)
    ax.set_title(f"Discrete distance, {len(labels)} labelled images by category (Figure 4)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_euclidean(result: StudyResult, features: np.ndarray, path: Path) -> None:
    plt = _plt()
    labels = result.heatmap_labels
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, data, title, corr in ((axes[0], features[result.heatmap_order], f"features ({result.input_dim})",
                                   result.correlation_before),
                                  (axes[1], result.codes[result.heatmap_order], f"codes ({result.coding_dim})",
                                   result.correlation_after)):
        image = ax.imshow(pairwise(data), cmap="viridis", interpolation="nearest")
        _category_ticks(ax, labels)
        ax.set_title(f"Euclidean distance, {title}\ncorrelation with the discrete distance {corr:.3f}", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle("Before and after the autoencoder (Figure 5)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_nmi(result: StudyResult, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, m in result.methods.items():
        if m.skipped is None:
            ax.plot(m.ks, m.nmi, color=COLOURS[name], label=name.replace("_", " "), linewidth=1.2)
    good = sorted(result.good.items())
    ax.plot([k for k, _ in good], [v for _, v in good], "--", color="tab:orange", label="good scenario")
    uniform = sorted(result.uniform.items())
    ax.plot([k for k, _ in uniform], [v for _, v in uniform], "--", color="tab:green", label="uniform scenario")
    ax.set_xscale("log")
    ax.set(xlabel="number of clusters k", ylabel="NMI (labelled images)", ylim=(0, 1),
           title=f"NMI of every level of every hierarchy (Figure 6): {result.images} images, "
                 f"{result.labelled} labelled")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_gallery(groups: list[tuple[int, int, list[np.ndarray]]], title: str, path: Path) -> None:
    """groups: (cluster, size, thumbnails) for the largest clusters."""
    plt = _plt()
    columns = max((len(t) for _, _, t in groups), default=1)
    fig, axes = plt.subplots(len(groups), columns, figsize=(1.2 * columns + 1, 1.3 * len(groups) + 0.6),
                             squeeze=False)
    for row, (cluster, size, thumbs) in enumerate(groups):
        for col in range(columns):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(thumbs):
                ax.imshow(thumbs[col], cmap="gray", vmin=0, vmax=255)
        axes[row][0].set_title(f"cluster {cluster} ({size} images)", fontsize=7, loc="left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def metrics(result: StudyResult, context: dict) -> dict:
    return {
        **context,
        "images": result.images, "labelled_images": result.labelled, "categories": result.classes,
        "input_dimension": result.input_dim, "coding_dimension": result.coding_dim,
        "intrinsic_dimension": {"features": result.id_before, "codes": result.id_after,
                                "scale_features": [{"points": p.points, "estimates": p.dimensions}
                                                   for p in result.scale_before],
                                "scale_codes": [{"points": p.points, "estimates": p.dimensions}
                                                for p in result.scale_after]},
        "autoencoder": {"reconstruction_mse": result.reconstruction_mse, "mean_only_mse": result.baseline_mse,
                        "epochs": result.autoencoder_epochs},
        "correlation_with_discrete_distance": {"features": result.correlation_before,
                                               "codes": result.correlation_after},
        "best_nmi": result.best(),
        "skipped_methods": {m: r.skipped for m, r in result.methods.items() if r.skipped},
        "seconds": result.seconds,
    }


def write_html(folder: Path, data: dict, gallery: str | None) -> None:
    rows = "".join(f"<tr><td>{html.escape(m)}</td><td>{v['k']}</td><td>{v['nmi']:.3f}</td></tr>"
                   for m, v in data["best_nmi"].items())
    skipped = "".join(f"<li>{html.escape(m)}: {html.escape(why)}</li>" for m, why in data["skipped_methods"].items())
    idd = data["intrinsic_dimension"]
    gallery_html = (f'<h2>Gallery</h2><p>The largest clusters: look at them to judge whether they mean '
                    f'something.</p><img src="{gallery}">') if gallery else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>semspark analysis {html.escape(data['analysis'])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #bbb;padding:2px 8px}}</style></head><body>
<h1>Unsupervised analysis of {html.escape(data['model_version'])}</h1>
<p>Scale bins {html.escape(', '.join(data['scale_bins']) or 'all')}; features {html.escape(data['features'])}
{'; predicted category ' + html.escape(data['within_category']) if data.get('within_category') else ''};
{data['images']} images, {data['labelled_images']} labelled ({len(data['categories'])} categories);
analysis run {html.escape(data['analysis_run'])}.</p>
<ul>
<li>2-NN intrinsic dimension: {idd['features']:.2f} of the {data['input_dimension']} features,
{idd['codes']:.2f} of the {data['coding_dimension']}-dimensional autoencoder codes.</li>
<li>Autoencoder reconstruction error {data['autoencoder']['reconstruction_mse']:.4f} (predicting the mean:
{data['autoencoder']['mean_only_mse']:.4f}) after {data['autoencoder']['epochs']} epochs.</li>
<li>Correlation of the Euclidean distance with the discrete (label) distance:
{data['correlation_with_discrete_distance']['features']:.3f} before, {data['correlation_with_discrete_distance']['codes']:.3f}
after the autoencoder.</li>
</ul>
<h2>Best NMI per method</h2><table><tr><th>method</th><th>k</th><th>NMI</th></tr>{rows}</table>
{('<p>Not run:</p><ul>' + skipped + '</ul>') if skipped else ''}
<h2>Figure 6: NMI against the number of clusters</h2><img src="fig6_nmi.png">
<h2>Figure 3: intrinsic dimension against scale</h2><img src="fig3_intrinsic_dimension.png">
<h2>Figure 4: discrete distance</h2><img src="fig4_discrete_distance.png">
<h2>Figure 5: Euclidean distances before and after the autoencoder</h2><img src="fig5_euclidean_distances.png">
{gallery_html}
<p>All numbers: <a href="metrics.json">metrics.json</a>; per level: the tables cluster_scores and clusters.</p>
</body></html>"""
    (folder / "index.html").write_text(page)
    (folder / "metrics.json").write_text(json.dumps(data, indent=2, sort_keys=True, default=float))
