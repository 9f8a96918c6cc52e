"""Render the report's blocks (`analysis.markdown.document`) as index.html.

Plain HTML with a small inline stylesheet: no JavaScript, no external resources, so it opens
straight from disk in any browser. The PNGs are referenced by relative path, so the report
folder can be copied or served as a whole.
"""
from __future__ import annotations

import html
import re

from analysis.markdown import Block, Bullets, Figure, Heading, Para, Table

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #eee; padding-bottom: .15em; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; font-size: 92%; overflow-wrap: anywhere; }
.table { overflow-x: auto; }
table { border-collapse: collapse; margin: .8em 0; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .3em .6em; vertical-align: top; }
th { background: #f5f5f5; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 90%; }
nav { color: #555; }
""".strip()

FILE_NOTES = {"results.csv": "one row per run", "comparisons.csv": "each option against its baseline",
              "scaling.csv": "fits per variant", "multipliers.csv": "compute multipliers",
              "transfer.csv": "the verdict at every rung"}

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_EM = re.compile(r"(?<![\w*])\*(?!\s)([^*]+?)(?<!\s)\*(?![\w*])")


def inline(text: str) -> str:
    """The markdown subset used in the report (`code`, **bold**, *em*) as escaped HTML."""
    codes: list[str] = []

    def stash(m: re.Match[str]) -> str:
        codes.append(f"<code>{html.escape(m.group(1), quote=False)}</code>")
        return f"\x00{len(codes) - 1}\x00"

    out = _CODE.sub(stash, text)  # code spans first: nothing inside them is formatted
    out = html.escape(out, quote=False)
    out = _BOLD.sub(r"<strong>\1</strong>", out)
    out = _EM.sub(r"<em>\1</em>", out)
    return re.sub("\x00(\\d+)\x00", lambda m: codes[int(m.group(1))], out)


def _table(t: Table) -> str:
    head = "".join(f"<th>{inline(h)}</th>" for h in t.header)
    rows = []
    for row in t.rows:
        cells = []
        for i, value in enumerate(row):
            cls = ' class="num"' if i < len(t.numeric) and t.numeric[i] else ""
            cells.append(f"<td{cls}>{inline(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    # In its own box: a table wider than a laptop's screen scrolls there, never the whole page.
    return (f"<div class=\"table\"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows)
            + "\n</tbody>\n</table></div>")


def to_html(blocks: list[Block], title: str = "Sweep report",
            files: tuple[str, ...] = ("report.md", "results.csv")) -> str:
    """The page; `files`: the report's other files, linked (relative to index.html) under the title."""
    body = []
    for i, b in enumerate(blocks):
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{inline(b.text)}</h{b.level}>")
            if i == 0:
                links = (f'<a href="{html.escape(name)}">{html.escape(name)}</a>'
                         + (f" ({FILE_NOTES[name]})" if name in FILE_NOTES else "") for name in files)
                body.append("<nav>Files: " + " · ".join(links) + "</nav>")
        elif isinstance(b, Para):
            body.append(f"<p>{inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>\n" + "\n".join(f"<li>{inline(x)}</li>" for x in b.items)
                        + "\n</ul>")
        elif isinstance(b, Table):
            body.append(_table(b))
        elif isinstance(b, Figure):
            src = html.escape(b.src)
            body.append(f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(b.alt)}">'
                        f"</a><figcaption>{inline(b.alt)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>\n{STYLE}\n</style>\n</head>\n"
            "<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")
