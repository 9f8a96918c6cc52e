"""The report as a reader meets it (issue 26): index.html of a small sweep opened in headless Chromium at a
laptop's size: the verdict paragraph first and on the first screen, every figure loaded, no horizontal
scrolling of the page, every link (the CSVs, report.md, the figures) answered. One screenshot is kept:
under $ABLATE_TEST_ARTIFACTS when set (CI keeps it), else in pytest's temporary directory."""
from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

from analysis import build_report
from tests import browser
from tests.synthetic import write_run

BROWSER = browser.chromium()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium (Debian: apt-get install chromium): "
                                                        "index.html is not opened in a browser here")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """norm x ffn, 3 seeds each, as runs write them; one failed run and one summary.json cut short, so the
    page holds every kind of table a reader meets."""
    root = tmp_path_factory.mktemp("browser") / "multirun" / "2026-12-07" / "10-00-00"
    job = 0
    for norm in ("rms", "ln"):
        for ffn in ("swiglu", "gelu"):
            for seed in range(3):
                loss = 3.0 + 0.2 * (norm == "ln") + 0.05 * (ffn == "gelu") + 0.01 * seed + 0.003 * job
                write_run(root / str(job), {"norm": norm, "ffn": ffn, "train.seed": str(seed)}, loss)
                job += 1
    write_run(root / "12", {"norm": "ln", "ffn": "gelu", "train.seed": "3"}, None, status="failed")
    write_run(root / "13", {"norm": "rms", "ffn": "gelu", "train.seed": "3"}, 3.1)
    (root / "13" / "summary.json").write_text('{"status": "completed", "final_val_lo')
    return build_report(root)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_the_page_in_a_browser_reads_as_a_report(report, tmp_path):
    with browser.served(report) as url:
        page = browser.measure(BROWSER, url + "index.html", tmp_path / "profile")
        shot = browser.screenshot(BROWSER, url + "index.html", tmp_path / "index.png", tmp_path / "profile")
    if os.environ.get("ABLATE_TEST_ARTIFACTS"):  # the one screenshot kept of a test run
        keep = Path(os.environ["ABLATE_TEST_ARTIFACTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / "report-index.png")
    assert png_size(shot) == (browser.WIDTH, browser.HEIGHT)

    # The verdict paragraph comes first (before any list, table or figure) and on the first screen.
    first = page["first"]
    assert first["tag"] == "P" and first["text"].startswith("Question:") and "Verdict" in first["text"]
    assert "ln worse" in first["text"] and "gelu worse" in first["text"]
    assert 0 <= first["top"] < browser.HEIGHT / 2
    # Every figure the report lists is there and decoded (a broken image has no natural width).
    figures = sorted(p.name for p in report.glob("*.png"))
    assert len(figures) >= 4 and sorted(i["src"] for i in page["images"]) == figures
    assert all(i["complete"] and i["width"] > 0 for i in page["images"]), page["images"]
    # At a laptop's width the page never scrolls sideways; its tables end inside the window.
    assert page["width"] == browser.WIDTH
    assert page["scroll_width"] <= page["width"] and page["body_scroll_width"] <= page["width"]
    assert len(page["tables"]) >= 5 and max(page["tables"]) <= page["width"]
    # Every link answers: the CSVs and report.md under the title, each figure's full-size PNG.
    hrefs = {link["href"]: link["status"] for link in page["links"]}
    assert {"report.md", "results.csv", "comparisons.csv", *figures} <= set(hrefs)
    assert set(hrefs.values()) == {200}, hrefs
    assert all((report / href).is_file() for href in hrefs)


def test_the_browser_check_sees_a_broken_image_and_a_page_too_wide(tmp_path):
    """The measurements above can fail: a missing PNG and a table wider than the window."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text(
        '<!DOCTYPE html><html><body><p>Question: a page</p><img src="missing.png">'
        '<table style="width:3000px"><tr><td>wide</td></tr></table><a href="results.csv">results</a></body></html>')
    with browser.served(tmp_path / "site") as url:
        page = browser.measure(BROWSER, url + "index.html", tmp_path / "profile")
    assert page["images"] == [{"src": "missing.png", "complete": True, "width": 0}]
    assert page["scroll_width"] > page["width"] and max(page["tables"]) > page["width"]
    assert page["links"] == [{"href": "results.csv", "status": 404}]
