"""Figures a reader can read (issue 26): at any number of swept axes and options, with long option names,
every text of every report figure lies inside the figure, titles and axis labels fit their panel and tick
labels stay clear of each other, measured on the drawn figure (matplotlib's window extents)."""
from __future__ import annotations

from pathlib import Path

import pytest

from analysis.build import gather
from analysis.collect import load_curves
from analysis.layout import PAD_PX, renderer_of
from analysis.plots import report_figures
from tests.test_report import make_run

BASE = {"norm": "rms", "pos": "rope", "train.eval_batches": "1"}


def one_at_a_time(root: Path, axes: dict[str, list[str]], seeds: int = 2) -> Path:
    """Each axis's options varied with the others at their first option (the worst case a reader meets in
    few runs: every panel holds all its options, the other axes as colours)."""
    job = 0
    first = {axis: options[0] for axis, options in axes.items()}
    for axis, options in axes.items():
        for option in options if job == 0 else options[1:]:
            for seed in range(seeds):
                make_run(root / str(job), {**first, axis: option, "train.seed": str(seed)},
                         3.0 + 0.01 * job + 0.03 * seed)
                job += 1
    return root


def grid(root: Path, axes: dict[str, list[str]], seeds: int = 2) -> Path:
    import itertools

    for job, values in enumerate(itertools.product(*axes.values(), range(seeds))):
        overrides = {**dict(zip(axes, values[:-1])), "train.seed": str(values[-1])}
        make_run(root / str(job), overrides, 3.0 + 0.05 * (job // seeds) + 0.03 * values[-1])
    return root


def long_names(axis: str) -> list[str]:
    return [BASE[axis]] + [f"{axis.split('.')[-1]}_variant_with_a_long_descriptive_name_{i}" for i in range(1, 8)]


CASES = {
    "3-axes-8-long-options": lambda root: one_at_a_time(root, {a: long_names(a) for a in BASE}),
    "2-axes-2-options": lambda root: grid(root, {"train.eval_batches": ["1", "2"], "norm": ["rms", "ln"]}),
    "1-axis-8-long-options": lambda root: grid(root, {"norm": long_names("norm")}),
}


def problems_of(fig) -> list[str]:
    """Every text of `fig` that leaves the figure, a title or axis label wider (taller) than its panel, and
    tick labels of one panel that run into each other."""
    renderer = renderer_of(fig)
    fig.canvas.draw()  # legends and ticks take their places only when drawn
    frame = fig.bbox
    found = []
    inside = lambda b: (b.x0 >= frame.x0 - 1 and b.y0 >= frame.y0 - 1 and b.x1 <= frame.x1 + 1  # noqa: E731
                        and b.y1 <= frame.y1 + 1)
    tight = fig.get_tightbbox(renderer)  # inches: what savefig(bbox_inches="tight") would have to add
    if not (tight.x0 >= -0.01 and tight.y0 >= -0.01 and tight.x1 <= fig.get_figwidth() + 0.01
            and tight.y1 <= fig.get_figheight() + 0.01):
        found.append(f"tight bbox {tight.extents} outside the figure {fig.get_size_inches()}")
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        ticks = {id(t) for t in ax.get_xticklabels(which="both") + ax.get_yticklabels(which="both")}
        for text in ax.findobj(lambda a: hasattr(a, "get_text") and id(a) not in ticks):
            if text.get_visible() and text.get_text().strip() and not inside(text.get_window_extent(renderer)):
                found.append(f"clipped: {text.get_text()!r}")
        if not inside(ax.get_tightbbox(renderer)):  # the tick labels drawn (those in the view)
            found.append(f"panel {ax.get_title()!r}: its tick labels leave the figure")
        box = ax.get_window_extent(renderer)
        for what, text, room in (("title", ax.title, box.width), ("x label", ax.xaxis.label, box.width),
                                 ("y label", ax.yaxis.label, box.height)):
            extent = text.get_window_extent(renderer)
            if text.get_text() and max(extent.width, extent.height) > room + 1:
                found.append(f"{what} wider than its panel: {text.get_text()!r}")
        lo, hi = ax.get_xlim()
        shown = [t for t, x in zip(ax.get_xticklabels(), ax.get_xticks()) if t.get_text() and lo <= x <= hi]
        boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: b.x0)
        if any(a.x1 + PAD_PX > b.x0 and a.y1 > b.y0 and b.y1 > a.y0 for a, b in zip(boxes, boxes[1:])):
            found.append(f"panel {ax.get_title()!r}: x tick labels overlap")
    for text in fig.texts:
        if text.get_text().strip() and not inside(text.get_window_extent(renderer)):
            found.append(f"clipped: {text.get_text()!r}")
    return found


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_figure_keeps_its_text_inside_and_legible(tmp_path, case):
    sweep = case(tmp_path / "sweep")
    findings = gather(sweep)
    figures = report_figures(findings, load_curves(sweep))
    assert set(figures) >= {"differences.png", "loss_curves.png", "final_loss.png", "throughput.png"}
    for name, make in figures.items():
        fig = make()
        texts = [t.get_text() for ax in fig.axes for t in (ax.title, ax.xaxis.label)]
        for axis in findings.axes:  # the text that says what a panel is stays there, wrapped at most
            assert any(axis in "".join(text.split()) for text in texts) or name == "loss_curves.png"
        assert problems_of(fig) == [], name


def test_the_check_finds_a_clipped_title(tmp_path):
    """The measurement above can fail: a title wider than its figure, left as matplotlib lays it out."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.set_title("train.eval_batches: below 0 favours the option (lower final_val_loss is better)")
    ax.set_xticks(range(8), [f"norm_variant_with_a_long_descriptive_name_{i}" for i in range(8)])
    fig.tight_layout()
    found = problems_of(fig)
    assert any(p.startswith("clipped: 'train.eval_batches") for p in found)
    assert any("x tick labels overlap" in p for p in found)
