"""Charts and small pictures as PNG bytes. Matplotlib is imported with this module, which
the page imports only when it has something to draw."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from pipeline.report.read import ALPHAS


def _figure(width: float = 6.4, height: float = 3.0) -> Figure:
    # fixed margins (room for the tick labels and one axis label a side): matplotlib's
    # constrained layout measured every text box first, half of a chart's drawing time
    figure = Figure(figsize=(width, height), dpi=100)
    figure.subplots_adjust(left=0.75 / width, right=0.98, bottom=0.5 / height, top=0.96)
    axes = figure.add_subplot()
    axes.grid(True, color="#e5e7eb", linewidth=0.8)
    axes.set_axisbelow(True)
    axes.spines[["top", "right"]].set_visible(False)
    return figure


def _counts_axis(axes) -> None:
    """Row counts as 950, 12k, 3.4M: short tick labels fit the fixed margin at any scale."""
    from matplotlib.ticker import FuncFormatter

    def compact(value, _position):
        for size, suffix in ((1e6, "M"), (1e3, "k")):
            if abs(value) >= size:
                return f"{value / size:.3g}{suffix}"
        return f"{value:.3g}"

    axes.yaxis.set_major_formatter(FuncFormatter(compact))


def _figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)
    figure.savefig(buffer, format="png", dpi=150)
    return buffer.getvalue()


def _rgb_png(rgb: np.ndarray, scale: int = 1) -> bytes:
    image = Image.fromarray(rgb)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def class_colors(count: int) -> list[str]:
    cmap = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
    return [matplotlib.colors.to_hex(cmap(i % cmap.N)) for i in range(count)]


def error_histogram(values: np.ndarray, tolerance) -> bytes:
    figure = _figure()
    axes = figure.axes[0]
    floor = max(values.min(), 1e-12)
    low, high = np.floor(np.log10(floor)), np.ceil(np.log10(max(values.max(), floor * 10)))
    bins = np.logspace(low, high, int(2 * (high - low)) + 1)
    axes.hist(np.clip(values, floor, None), bins=bins, color="#3b6ea5", edgecolor="white")
    axes.set_xscale("log")
    if tolerance:
        axes.axvline(tolerance, color="#cf222e", linestyle="--", linewidth=1.2)
    axes.set_xlabel("relative completeness error")
    axes.set_ylabel("rows")
    _counts_axis(axes)
    return _figure_png(figure)


def steps_chart(steps: np.ndarray) -> bytes:
    figure = _figure()
    axes = figure.axes[0]
    distinct, counts = np.unique(steps, return_counts=True)
    if distinct.size <= 30:
        axes.bar([str(v) for v in distinct], counts, color="#3b6ea5")
    else:
        axes.hist(steps, bins=30, color="#3b6ea5", edgecolor="white")
    axes.set_xlabel("points of the final rule (steps)")
    axes.set_ylabel("rows")
    _counts_axis(axes)
    return _figure_png(figure)


def curves_chart(curves: list[np.ndarray], colors: list[str]) -> bytes:
    figure = _figure(6.4, 3.6)
    axes = figure.axes[0]
    for curve, color in zip(curves, colors):
        axes.plot(ALPHAS, curve, color=color, linewidth=1.8)
    axes.set_xlim(0, 1)
    axes.set_xlabel("alpha (baseline = 0, image = 1)")
    axes.set_ylabel("mean target score")
    return _figure_png(figure)


def heatmap_png(grid: np.ndarray, vmax: float) -> bytes:
    values = np.clip(grid / vmax, 0, 1) if vmax > 0 else np.zeros_like(grid)
    rgb = matplotlib.colormaps["inferno"](values, bytes=True)[..., :3]
    return _rgb_png(np.ascontiguousarray(rgb), scale=max(1, 168 // grid.shape[0]))


def colorbar_png() -> bytes:
    rgb = matplotlib.colormaps["inferno"](
        np.linspace(0, 1, 256)[None, :].repeat(10, 0), bytes=True
    )[..., :3]
    return _rgb_png(np.ascontiguousarray(rgb))


def faithfulness_chart(
    curves: list, randoms: list, colors: list[str], kind: str, fill: str = "baseline"
) -> bytes:
    """Mean deletion or insertion curves per class (solid) against the random order
    (dashed, same colour), over the fraction of pixels changed; ``fill``: --deletion_fill."""
    figure = _figure(6.4, 3.6)
    axes = figure.axes[0]
    for curve, random, color in zip(curves, randoms, colors):
        if curve is not None:
            axes.plot(np.linspace(0, 1, len(curve)), curve, color=color, linewidth=1.8)
        if random is not None:
            axes.plot(
                np.linspace(0, 1, len(random)), random, color=color, linewidth=1.2, linestyle="--"
            )
    axes.set_xlim(0, 1)
    removed = {"baseline": "replaced by the baseline", "blur": "blurred", "road": "imputed (ROAD)"}
    if kind == "deletion":
        verb = f"removed ({removed.get(fill, fill)})"
    else:
        verb = "put back on the blur" if fill != "road" else "put back (the rest imputed, ROAD)"
    axes.set_xlabel(f"fraction of pixels {verb}")
    axes.set_ylabel("mean target score")
    return _figure_png(figure)


def gap_histogram(gaps: np.ndarray) -> bytes:
    """Per row, random deletion AUC minus attribution-order deletion AUC (> 0: beats random)."""
    figure = _figure()
    axes = figure.axes[0]
    axes.hist(gaps, bins=40, color="#2563eb")
    axes.axvline(0.0, color="#b91c1c", linestyle="--", linewidth=1.2)
    axes.set_xlabel("deletion AUC gap (random - attribution order; > 0 beats random)")
    axes.set_ylabel("rows")
    _counts_axis(axes)
    return _figure_png(figure)


def strategy_map_png(grid, vmax: float, box=None) -> bytes:
    """A strategy's mean layout (a flat row-major square grid) as a heatmap, with its hotspot
    box (x0, y0, x1, y1 as fractions of the model input) outlined in cyan."""
    from PIL import ImageDraw

    values = np.asarray(grid, np.float64)
    cells = int(round(values.size**0.5))
    image = Image.open(io.BytesIO(heatmap_png(values.reshape(cells, cells), vmax)))
    if box is not None:
        width, height = image.size
        x0, y0, x1, y1 = (round(v * s) for v, s in zip(box, (width, height, width, height)))
        ImageDraw.Draw(image).rectangle(
            (x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=(0, 229, 255), width=2
        )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


MAX_PICTURE_PIXELS = 64_000_000  # a picture claiming more pixels is not decoded
PICTURE_BUDGET = 12_000  # bytes a picture may take in a page before it is shrunk


def compact(data: bytes, mime: str, side: int, budget: int = PICTURE_BUDGET) -> tuple[bytes, str]:
    """A picture for a page: ``(data, mime)`` as is when it takes at most ``budget`` bytes,
    else decoded, shrunk to at most ``side`` pixels a side and saved as JPEG (quality 80),
    so a page of hundreds of ImageNet-size overlays stays a few MB."""
    if len(data) <= budget:
        return data, mime
    with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > MAX_PICTURE_PIXELS:
            raise ValueError(f"{image.width} x {image.height} pixels is too large to draw")
        image = image.convert("RGB")
        image.thumbnail((side, side))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue(), "image/jpeg"
