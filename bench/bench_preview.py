"""Benchmark the job page's G-code preview: how long it blocks the page's main thread.

Loads web/static/js/preview.js (this tree) and the preview.js of `main` (`git show
main:web/static/js/preview.js`, the baseline) in the same run, alternately, into the same
harness page (the job page's preview slot, importmap and vendored gcode-preview/three.js),
in Debian's Chromium through Playwright, on generated spiral-vase G-code of a few sizes.
For each load it reports the longest task on the main thread (the Long Tasks API), the total
blocking time (the sum of every long task's time past 50 ms), the time until the preview is
drawn (`data-layers` set), the layer count, the JS heap once drawn, and the longest task in
the two seconds after (the page only showing the preview).

    .venv/bin/python bench/bench_preview.py [--mib 1 4 16] [--rounds 2] [--baseline main]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import http.server
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

STATIC = REPO / "web" / "static"
IMPORTS = (
    '{"imports": {"three": "/static/vendor/three-0.159.0.module.min.js", '
    '"lil-gui": "/static/vendor/lil-gui-0.19.2.esm.min.js", '
    '"gcode-preview": "/static/vendor/gcode-preview-2.18.0.es.js"}}'
)
PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>preview bench</title>
<link rel="stylesheet" href="/static/css/preview.css">
<script type="importmap">{imports}</script></head>
<body><main id="main"><div class="preview-main">
<div id="gcode-preview-slot" data-src="/gcode/{name}" data-kind="fdm_printer"
 data-bbox='{{"min_x": 60, "max_x": 140, "min_y": 60, "max_y": 140,
 "min_z": 0, "max_z": {top}}}'></div>
<p id="preview-status" aria-live="polite">Loading the preview…</p></div></main>
<script type="module" src="{script}"></script></body></html>"""
# Installed before any script of the page: every long task from the start is kept.
OBSERVE = """
window.__longTasks = [];
window.__entries = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    window.__longTasks.push(e.duration);
    window.__entries.push([Math.round(e.startTime), Math.round(e.duration)]);
  }
}).observe({ type: "longtask", buffered: true });
"""
RESULT = """() => ({
  longest: Math.max(0, ...window.__longTasks),
  blocking: window.__longTasks.reduce((s, d) => s + Math.max(0, d - 50), 0),
  tasks: window.__longTasks.length,
  layers: Number(document.getElementById("gcode-preview-slot").dataset.layers),
  status: document.getElementById("preview-status").textContent,
  heap: performance.memory ? performance.memory.usedJSHeapSize : null,
  top: [...window.__entries].sort((a, b) => b[1] - a[1]).slice(0, 4),
  marks: Object.fromEntries(
    performance.getEntriesByType("mark").map((m) => [m.name, Math.round(m.startTime)])
  ),
})"""


def vase_gcode(size_bytes: int) -> tuple[bytes, float]:
    """Spiral-vase G-code (Z rises on every move, as a slicer's vase mode writes it) of about
    `size_bytes`; return it and its height."""
    out = [b"; generated spiral vase for bench/bench_preview.py", b"G21", b"G90", b"M82"]
    out += [b"M104 S210", b"M140 S60", b"G28", b"G1 Z0.2 F3000", b"G92 E0"]
    segments, radius, layer = 360, 40.0, 0.2
    size = sum(len(x) + 1 for x in out)
    e = z = 0.0
    step_len = 2 * math.pi * radius / segments
    k = 0
    while size < size_bytes:
        a = 2 * math.pi * (k % segments) / segments
        z += layer / segments
        e += step_len * 0.033
        x, y = 100 + radius * math.cos(a), 100 + radius * math.sin(a)
        line = f"G1 X{x:.3f} Y{y:.3f} Z{z + 0.2:.4f} E{e:.5f}"
        if k == 0:
            line += " F1800"
        out.append(line.encode())
        size += len(line) + 1
        k += 1
    out += [b"M104 S0", b"M140 S0", b"M84"]
    return b"\n".join(out) + b"\n", z + 0.2


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serve the harness: /static from the tree, /old/preview.js, /gcode/*, the pages."""

    def __init__(self, *args: Any, root: Path, **kwargs: Any) -> None:
        self.root = root
        super().__init__(*args, directory=str(root), **kwargs)

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0]
        if clean.startswith("/static/"):
            return str(STATIC / clean.removeprefix("/static/"))
        return super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    http.server.SimpleHTTPRequestHandler.extensions_map[".js"] = "text/javascript"
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, root=root)
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


IDLE_MS = 2000  # watched after the preview is drawn


def load_once(browser: Any, url: str) -> dict[str, Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.add_init_script(OBSERVE)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("#gcode-preview-slot[data-layers]", state="attached", timeout=600_000)
    drawn = time.perf_counter() - started
    page.wait_for_timeout(300)  # the last tasks' entries are delivered
    result: dict[str, Any] = page.evaluate(RESULT)
    result["drawn_s"] = drawn
    # Then the page only shows the preview: is its main thread free again?
    page.evaluate("window.__longTasks = []")
    page.wait_for_timeout(IDLE_MS)
    result["after"] = page.evaluate("Math.max(0, ...window.__longTasks)")
    result["errors"] = errors
    context.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=float, nargs="+", default=[1, 4, 16])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--baseline", default="main", help="the git revision of the old preview.js")
    ap.add_argument("--verbose", action="store_true", help="the longest tasks and when")
    args = ap.parse_args()
    verbose = args.verbose

    from playwright.sync_api import sync_playwright

    old = subprocess.run(
        ["git", "show", f"{args.baseline}:web/static/js/preview.js"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout
    baseline_commit = subprocess.run(
        ["git", "rev-parse", "--short", args.baseline], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-preview-") as tmp:
        root = Path(tmp)
        (root / "old").mkdir()
        (root / "old" / "preview.js").write_bytes(old)
        (root / "gcode").mkdir()
        pages = []
        for mib in args.mib:
            data, top = vase_gcode(int(mib * 1024 * 1024))
            name = f"vase-{mib:g}MiB.gcode"
            (root / "gcode" / name).write_bytes(data)
            for variant, script in (("main", "/old/preview.js"), ("this", "/static/js/preview.js")):
                html = PAGE.format(imports=IMPORTS, name=name, top=f"{top:.1f}", script=script)
                (root / f"{variant}-{name}.html").write_text(html)
            pages.append((mib, name, data.count(b"\n")))
        server, base = serve(root)
        print(f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC · {platform.machine()} · "
              f"{os.cpu_count()} CPUs · Python {platform.python_version()} · "
              f"load before {os.getloadavg()[0]:.1f}")  # fmt: skip
        print(f"baseline: preview.js of {args.baseline} ({baseline_commit})")
        rows: dict[tuple[float, str], list[dict[str, Any]]] = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            print(browser.version)
            for rnd in range(args.rounds):
                for mib, name, lines in pages:
                    order = ("main", "this") if rnd % 2 == 0 else ("this", "main")
                    for variant in order:
                        r = load_once(browser, f"{base}/{variant}-{name}.html")
                        rows.setdefault((mib, variant), []).append(r)
                        print(
                            f"round {rnd + 1} {mib:>5g} MiB ({lines:,} lines) {variant:>4}: "
                            f"longest task {r['longest']:7.0f} ms, blocking {r['blocking']:7.0f}"
                            f" ms in {r['tasks']:3d} long tasks, drawn in {r['drawn_s']:5.1f} s,"
                            f" {r['layers']} layers, heap {(r['heap'] or 0) / 2**20:.0f} MiB,"
                            f" then longest task {r['after']:4.0f} ms"
                            f"{' ERRORS ' + str(r['errors']) if r['errors'] else ''}"
                        )
                        if verbose:
                            print(f"    longest [start ms, ms]: {r['top']}  marks: {r['marks']}")
            browser.close()
        server.shutdown()
        print(f"load after {os.getloadavg()[0]:.1f}")
        print("\nmedians")
        for mib, _name, _lines in pages:
            for variant in ("main", "this"):
                rs = rows[(mib, variant)]
                print(
                    f"{mib:>5g} MiB {variant:>4}: longest task "
                    f"{statistics.median(r['longest'] for r in rs):7.0f} ms, blocking "
                    f"{statistics.median(r['blocking'] for r in rs):7.0f} ms, drawn in "
                    f"{statistics.median(r['drawn_s'] for r in rs):5.1f} s, heap "
                    f"{statistics.median((r['heap'] or 0) for r in rs) / 2**20:.0f} MiB; "
                    f"in the {IDLE_MS / 1000:g} s after: longest task "
                    f"{statistics.median(r['after'] for r in rs):4.0f} ms"
                )


if __name__ == "__main__":
    main()
