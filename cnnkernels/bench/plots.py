"""``cnnkernels bench --plots DIR``: PNG plots of a run's rows (matplotlib,
Agg backend, imported only here):

- speedup_per_layer.png: ours / torch per layer, one panel per model, one
  bar per row (op, layer, direction, backend and algorithm), log scale, 1 =
  torch's speed;
- roofline_fraction.png: the fraction of the roofline each op's rows reach
  (one point per row, per op family and direction);
- nms_time.png: the NMS kinds' time (nms, batched_nms, soft_nms and
  matrix_nms, a line per decay) against the number of boxes, ours per
  backend and torch's.
"""

from __future__ import annotations

import math
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ok(rows: list[dict]) -> list[dict]:
    return [row for row in rows if row.get("status") == "ok" and row.get("ours_ms")]


def _label(row: dict) -> str:
    impl = row["backend"] + (f" {row['algorithm']}" if row.get("algorithm") else "")
    return f"{row['op']} {row['name']} {row['direction'][:3]} {impl}"


def speedup_per_layer(rows: list[dict], path: Path) -> Path | None:
    by_model: dict[str, list[dict]] = {}
    for row in _ok(rows):
        if row.get("speedup") and row.get("model"):  # a model's layer, not a workload
            by_model.setdefault(row["group"], []).append(row)
    if not by_model:
        return None
    plt = _pyplot()
    models = sorted(by_model)
    columns = min(2, len(models))
    rows_of_panels = math.ceil(len(models) / columns)
    heights = [max(2.0, 0.22 * len(by_model[m]) + 1) for m in models]
    figure, axes = plt.subplots(rows_of_panels, columns, squeeze=False,
                                figsize=(7 * columns, sum(heights[::columns]) + 1))
    for axis, model in zip(axes.flat, models, strict=False):
        model_rows = by_model[model]
        values = [row["speedup"] for row in model_rows]
        colours = ["tab:green" if v >= 1 else "tab:red" for v in values]
        axis.barh(range(len(values)), values, color=colours)
        axis.set_yticks(range(len(values)), [_label(row) for row in model_rows], fontsize=7)
        axis.invert_yaxis()
        axis.set_xscale("log")
        axis.axvline(1, color="black", linewidth=0.8)
        axis.set_title(f"{model}: torch time / ours (>1: ours faster)", fontsize=9)
    for axis in list(axes.flat)[len(models):]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def roofline_fraction(rows: list[dict], path: Path) -> Path | None:
    groups: dict[str, list[float]] = {}
    for row in _ok(rows):
        if row.get("roofline_fraction") is not None:
            key = f"{row['op']}\n{row['direction']}"
            groups.setdefault(key, []).append(100 * row["roofline_fraction"])
    if not groups:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(groups)), 4.5))
    for index, (_, values) in enumerate(sorted(groups.items())):
        spread = [index + 0.25 * ((i % 7) / 6 - 0.5) for i in range(len(values))]
        axis.scatter(spread, values, s=14, alpha=0.7)
        axis.hlines(sorted(values)[len(values) // 2], index - 0.3, index + 0.3, color="black")
    axis.set_xticks(range(len(groups)), sorted(groups), fontsize=8)
    axis.set_ylabel("% of the roofline (time at the bound / ours)")
    axis.set_title("Fraction of the roofline per op (one point per row, bar: median)")
    axis.set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def nms_time(rows: list[dict], path: Path) -> Path | None:
    nms = [row for row in _ok(rows) if str(row.get("kind", "")).endswith("nms")]
    if not nms:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    lines: dict[str, dict[int, float]] = {}
    for row in nms:
        impl = row["backend"] + (f" {row['algorithm']}" if row.get("algorithm") else "")
        op = row["kind"] + (f" {row['method']}" if row.get("method") else "")
        lines.setdefault(f"{op} ours ({impl})", {})[row["boxes"]] = row["ours_ms"]
        if row.get("torch_ms"):
            lines.setdefault(f"{op} torch reference", {})[row["boxes"]] = row["torch_ms"]
    for label, points in sorted(lines.items()):
        sizes = sorted(points)
        axis.plot(sizes, [points[n] for n in sizes], marker="o",
                  linestyle="--" if "torch" in label else "-", label=label)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("boxes per image")
    axis.set_ylabel("ms per batch")
    axis.set_title("NMS time against the number of boxes")
    axis.legend(fontsize=8)
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_plots(rows: list[dict], out_dir: Path) -> list[Path]:
    """Every plot the rows have data for; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot(rows, out_dir / f"{plot.__name__}.png")
               for plot in (speedup_per_layer, roofline_fraction, nms_time)]
    return [path for path in written if path is not None]
