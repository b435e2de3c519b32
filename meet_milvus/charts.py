"""Charts of an evaluation (`meet-milvus eval run --plot`): R@K per method, and R@10 against the
time a query takes. Drawn with Pillow, which the contact sheets already need, so the plot adds
no dependency to the install the README gives (matplotlib stays a benchmark extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from meet_milvus.errors import MeetError
from meet_milvus.evaluation import KS, Recall
from meet_milvus.inputs import check_output_path
from meet_milvus.sheet import BACKGROUND, EMPTY, INK, MUTED, _font

# Colour-blind-safe (Okabe-Ito), one per method in order.
COLOURS = [(0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (213, 94, 0),
           (86, 180, 233), (120, 120, 120)]  # fmt: skip
BAR_W, GAP, PLOT_H, PAD = 11, 18, 300, 16


def check_plot_path(path: str | Path) -> Path:
    """A .png path in an existing folder, refused with one line before the evaluation runs."""
    return check_output_path(path, "--plot", (".png",))


def write_recall_chart(
    path: str | Path,
    recalls: dict[str, Recall],
    ms_per_query: dict[str, float],
    title: str,
    note: str = "",
) -> Path:
    """Saves a PNG: grouped bars of R@1/5/10 both ways per method, and each method's mean R@10
    against its milliseconds a query (the stages' sum, both directions averaged)."""
    path = check_plot_path(path)
    if not recalls:
        raise MeetError("--plot: no methods to draw")
    image = recall_chart(recalls, ms_per_query, title, note)
    try:
        image.save(path, "PNG", optimize=True)
    except OSError as e:
        raise MeetError(f"--plot {path}: cannot write ({e.strerror or e})") from None
    return path


def recall_chart(
    recalls: dict[str, Recall], ms_per_query: dict[str, float], title: str, note: str = ""
) -> Image.Image:
    names = list(recalls)
    font, small, big = _font(13), _font(11), _font(17)
    groups = [(d, k) for d in ("i2t", "t2i") for k in KS]
    group_w = len(names) * BAR_W + GAP
    left_w = 46 + len(groups) * group_w
    right_w = 330
    width = PAD + left_w + 2 * PAD + right_w + PAD
    legend_top = 54 + PLOT_H + 44
    height = legend_top + 20 * len(names) + (22 if note else 0) + PAD
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((PAD, PAD), title, font=big, fill=INK)

    # Left: R@K bars, 0..top percent.
    top = _ceil_to(max(max(r.as_row()[:6]) for r in recalls.values()), 10)
    x0, y0 = PAD + 40, 54
    _axes(draw, x0, y0, len(groups) * group_w, top, small, "%")
    for g, (direction, k) in enumerate(groups):
        gx = x0 + GAP // 2 + g * group_w
        for m, name in enumerate(names):
            value = getattr(recalls[name], f"r{k}_{direction}")
            h = round(PLOT_H * value / top)
            x = gx + m * BAR_W
            draw.rectangle([x, y0 + PLOT_H - h, x + BAR_W - 2, y0 + PLOT_H], fill=_colour(m))
        draw.text((gx, y0 + PLOT_H + 6), f"R@{k} {direction}", font=small, fill=INK)

    # Right: mean R@10 against ms/query.
    rx = PAD + left_w + 2 * PAD + 34
    rw = right_w - 44
    times = [ms_per_query.get(n, 0.0) for n in names]
    r10 = [(recalls[n].r10_i2t + recalls[n].r10_t2i) / 2 for n in names]
    t_top = _ceil_to(max(times) * 1.1, 1) or 1.0
    y_top = _ceil_to(max(r10), 10)
    _axes(draw, rx, y0, rw, y_top, small, "%")
    draw.text((rx, y0 - 18), "R@10 (mean of both ways) vs ms/query", font=small, fill=MUTED)
    draw.text((rx + rw - 60, y0 + PLOT_H + 6), f"{t_top:g} ms", font=small, fill=MUTED)
    draw.text((rx, y0 + PLOT_H + 6), "0", font=small, fill=MUTED)
    for m, (t, r) in enumerate(zip(times, r10, strict=True)):
        cx, cy = rx + rw * t / t_top, y0 + PLOT_H * (1 - r / y_top)
        draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=_colour(m))

    # Legend: colour, method, rSum, ms/query.
    for m, name in enumerate(names):
        y = legend_top + 20 * m
        draw.rectangle([PAD, y + 3, PAD + 12, y + 15], fill=_colour(m))
        label = f"{name}  (rSum {recalls[name].rsum:.1f}, {times[m]:.2f} ms/query)"
        draw.text((PAD + 20, y), label, font=font, fill=INK)
    if note:
        draw.text((PAD, legend_top + 20 * len(names) + 4), note, font=small, fill=MUTED)
    return image


def _axes(draw: ImageDraw.ImageDraw, x0: int, y0: int, w: int, top: float, font, unit: str):
    for i in range(5):
        value = top * i / 4
        y = y0 + PLOT_H - round(PLOT_H * i / 4)
        draw.line([x0, y, x0 + w, y], fill=EMPTY if i else MUTED)
        draw.text((x0 - 36, y - 7), f"{value:g}{unit}", font=font, fill=MUTED)


def _ceil_to(value: float, step: float) -> float:
    return max(step, step * -(-value // step))


def _colour(i: int) -> tuple[int, int, int]:
    return COLOURS[i % len(COLOURS)]


def total_ms(stages: dict[str, Sequence]) -> float:
    """A method's milliseconds a query: its stages' sum, averaged over the directions."""
    per_direction = [sum(s.ms_per_query for s in stats) for stats in stages.values()]
    return sum(per_direction) / max(len(per_direction), 1)
