"""A line chart as SVG geometry for a template (no script, no style sheet: it passes the app's
Content-Security-Policy): test accuracy per epoch of several models, the paper's Figures 1 and 2."""
from __future__ import annotations

COLOURS = ("#1d3557", "#e63946", "#2a9d8f", "#f4a261", "#6d597a", "#457b9d", "#8ab17d", "#b5838d")


def line_chart(series: dict[str, list[tuple[int, float]]], width: int = 640, height: int = 320,
               margin: int = 40) -> dict:
    """Series name -> [(epoch, accuracy)] to polylines in a width x height box; accuracy 0..1."""
    epochs = [e for points in series.values() for e, _ in points]
    last = max(epochs, default=1)
    first = min(epochs, default=0)
    span = max(1, last - first)

    def x(epoch: float) -> float:
        return round(margin + (epoch - first) / span * (width - 2 * margin), 1)

    def y(value: float) -> float:
        return round(height - margin - value * (height - 2 * margin), 1)

    lines = []
    for k, (name, points) in enumerate(series.items()):
        lines.append({"name": name, "colour": COLOURS[k % len(COLOURS)],
                      "points": " ".join(f"{x(e)},{y(v)}" for e, v in points),
                      "dots": [(x(e), y(v)) for e, v in points], "n": len(points),
                      "legend_y": margin + 14 * k})
    step = max(1, round(span / 8))
    return {"width": width, "height": height, "margin": margin, "lines": lines,
            "x_ticks": [(x(e), e) for e in range(first, last + 1, step)],
            "y_ticks": [(y(v / 10), f"{v / 10:.1f}") for v in range(0, 11, 2)],
            "x0": margin, "x1": width - margin, "y0": height - margin, "y1": margin}
