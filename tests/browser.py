"""A report page as a browser shows it: headless Chromium (Debian's `chromium`) opens the page from a
local HTTP server, which appends a small script to the HTML it sends (the file on disk is never touched);
the script measures what a reader meets on screen and Chromium's --dump-dom hands the measurements back."""
from __future__ import annotations

import functools
import html
import json
import os
import re
import shutil
import subprocess
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

WIDTH, HEIGHT = 1366, 900  # a laptop's screen
CHECK = "__check__"
# Runs at the page's load event (images loaded or failed by then): measures first, then writes the result.
SCRIPT = """<script>
window.addEventListener("load", () => {
  const first = document.querySelector("p, ul, ol, table, figure, img, pre");
  const status = (href) => { const x = new XMLHttpRequest(); x.open("HEAD", href, false); x.send(); return x.status; };
  const links = [...document.querySelectorAll("a[href]")].map(a => ({href: a.getAttribute("href"), status: status(a.href)}));
  const result = {
    width: window.innerWidth,
    scroll_width: document.documentElement.scrollWidth,
    body_scroll_width: document.body.scrollWidth,
    first: first ? {tag: first.tagName, text: first.textContent, top: first.getBoundingClientRect().top} : null,
    images: [...document.images].map(i => ({src: i.getAttribute("src"), complete: i.complete, width: i.naturalWidth})),
    tables: [...document.querySelectorAll("table")].map(t => t.getBoundingClientRect().right),
    links: links,
  };
  const out = document.createElement("pre");
  out.id = "%s";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>""" % CHECK


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


class _Handler(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path, _, query = self.path.partition("?")
        if query != "check":
            return super().do_GET()
        page = (Path(self.directory) / path.lstrip("/")).read_text(encoding="utf-8")
        body = page.replace("</body>", SCRIPT + "\n</body>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # quiet: pytest shows the assertions
        pass


@contextmanager
def served(folder: Path) -> Iterator[str]:
    """`folder` over HTTP on a free local port, read-only; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _run(browser: str, profile: Path, *args: str) -> str:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "HOME": str(profile)})
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def measure(browser: str, url: str, profile: Path) -> dict[str, Any]:
    """What the check script measured on the page at `url` (an index.html under `served`)."""
    dom = _run(browser, profile, "--dump-dom", url + "?check")
    found = re.search(rf'<pre id="{CHECK}">(.*?)</pre>', dom, re.S)
    if not found:
        raise RuntimeError(f"the page's check did not run; the browser gave:\n{dom[-2000:]}")
    return json.loads(html.unescape(found.group(1)))


def screenshot(browser: str, url: str, path: Path, profile: Path) -> Path:
    _run(browser, profile, f"--screenshot={path}", url)
    return path
