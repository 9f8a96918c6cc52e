"""Text that fits: every report figure ends with `fit_layout`, so titles, axis labels, tick labels and
legends stay inside the figure and clear of each other at any number of swept axes and options and any
length of option names (matplotlib's tight_layout only moves margins: it cannot shorten a title wider
than its panel or part tick labels that run into each other)."""
from __future__ import annotations

import math
import re
import warnings

from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FixedLocator

PAD_PX = 4  # the least gap between two neighbouring tick labels, in pixels
MIN_PANEL_IN = 2.4  # the least height a panel keeps for its data, in inches


def renderer_of(fig: Figure):
    """The figure's renderer, measuring text as savefig draws it (an Agg canvas for a pyplot-free Figure)."""
    if not hasattr(fig.canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    return fig.canvas.get_renderer()


def _broken(text: str, chars: int) -> str:
    """`text` in lines of at most `chars` characters where it can be, broken after a space or after one
    of `_ . , = -` (so `norm_variant_with_a_long_name` parts at its underscores)."""
    lines, line = [], ""
    for piece in filter(None, re.findall(r"[^\s_.,=-]*[\s_.,=-]?", " ".join(text.split()))):
        if line and len(line) + len(piece.rstrip()) > chars:
            lines.append(line.rstrip())
            line = ""
        line += piece
    return "\n".join(lines + [line.rstrip()] if line.strip() else lines)


def _length(text: Text, renderer) -> float:
    """The text's extent along its own direction (a y label runs up the page)."""
    box = text.get_window_extent(renderer)
    return box.height if text.get_rotation() % 180 == 90 else box.width


def _wrap(text: Text, room_px: float, renderer) -> bool:
    """Break `text` into lines no longer than `room_px`; whether it had to."""
    original = text.get_text()
    for _ in range(6):
        length = _length(text, renderer)
        if length <= room_px or not original.strip():
            return text.get_text() != original
        longest = max(len(line) for line in text.get_text().split("\n"))
        text.set_text(_broken(original, max(4, int(longest * room_px / length) - 1)))
    return True


def _overlap(texts: list[Text], spacing: float, renderer) -> bool:
    """Whether labels centred `spacing` pixels apart run into each other (measured without drawing)."""
    widths = [t.get_window_extent(renderer).width for t in texts]
    return any((a + b) / 2 + PAD_PX > spacing for a, b in zip(widths, widths[1:]))


def _fit_tick_labels(ax, renderer) -> bool:
    """Option names under a panel's ticks that run into each other: each broken into lines as wide as
    its slot, or upright where even that does not fit. (Only named ticks, and through set_xticks: reading
    the labels back re-formats them from the names given there.)"""
    if not isinstance(ax.xaxis.get_major_locator(), FixedLocator):
        return False
    labels, ticks = ax.get_xticklabels(), list(ax.get_xticks())
    names = [t.get_text() for t in labels]
    lo, hi = ax.get_xlim()
    shown = [i for i, x in enumerate(ticks) if names[i] and min(lo, hi) <= x <= max(lo, hi)]
    if len(shown) < 2:
        return False
    slot = ax.get_window_extent(renderer).width * min(abs(b - a) for a, b in zip(ticks, ticks[1:])) / abs(hi - lo)
    if not _overlap([labels[i] for i in shown], slot, renderer):
        return False
    broken = list(names)
    for i in shown:
        _wrap(labels[i], slot - PAD_PX, renderer)
        broken[i] = labels[i].get_text()
    if not _overlap([labels[i] for i in shown], slot, renderer):
        ax.set_xticks(ticks, broken)
    else:
        ax.set_xticks(ticks, names, rotation=90)
    ax.set_xlim(lo, hi)
    return True


def _fit_titles_and_labels(fig: Figure, renderer) -> bool:
    changed = False
    for ax in _panels(fig):
        box = ax.get_window_extent(renderer)
        for text, room in ((ax.title, box.width), (ax.xaxis.label, box.width), (ax.yaxis.label, box.height)):
            changed |= _wrap(text, room, renderer)
        legend = ax.get_legend()
        if legend is not None:
            handle = legend.get_window_extent(renderer).width - max(
                (t.get_window_extent(renderer).width for t in legend.get_texts()), default=0)
            for t in [*legend.get_texts(), legend.get_title()]:
                changed |= _wrap(t, max(box.width - handle, 40), renderer)
    suptitle = getattr(fig, "_suptitle", None)  # (matplotlib keeps the Text object only there)
    if suptitle is not None:
        changed |= _wrap(suptitle, fig.bbox.width * 0.95, renderer)
    return changed


def _panels(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def _grow(fig: Figure) -> bool:
    """A taller figure where the rows' titles, tick labels and axis labels leave a panel less than
    MIN_PANEL_IN for its data (long option names broken into lines take height)."""
    renderer = renderer_of(fig)
    rows: dict[int, float] = {}
    for ax in _panels(fig):
        spec = ax.get_subplotspec()
        row = spec.rowspan.start if spec is not None else 0
        around = (ax.get_tightbbox(renderer).height - ax.get_window_extent(renderer).height) / fig.dpi
        rows[row] = max(rows.get(row, 0.0), around)
    suptitle = getattr(fig, "_suptitle", None)
    top = suptitle.get_window_extent(renderer).height / fig.dpi if suptitle is not None else 0.0
    needed = sum(rows.values()) + MIN_PANEL_IN * len(rows) + top + 0.3
    if needed <= fig.get_figheight() + 0.01:
        return False
    fig.set_figheight(needed)
    return True


def _tight(fig: Figure) -> None:
    with warnings.catch_warnings():  # a layout that cannot fit yet is grown below; the tests measure the end
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()


def panel_grid(n: int, width: float, height: float = 4.8, columns: int = 2) -> tuple[Figure, list]:
    """A figure of `n` panels of `width` x `height` inches, at most `columns` to a row: a report's PNG is
    shown at the page's width, where a longer row would shrink its text."""
    cols = max(1, min(n, columns))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows))
    grid = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for panel in grid[n:]:
        fig.delaxes(panel)
    return fig, grid[:n]


def fit_layout(fig: Figure) -> None:
    """tight_layout with every panel's text fitted to its panel and the figure grown where the text needs
    height; again while that changed anything, as the panels shrink to make room (once when all fits)."""
    _tight(fig)
    for _ in range(3):
        renderer = renderer_of(fig)
        changed = any([_fit_tick_labels(ax, renderer) for ax in _panels(fig)])
        changed |= _fit_titles_and_labels(fig, renderer)
        if not (_grow(fig) or changed):
            return
        _tight(fig)
