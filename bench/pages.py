#!/usr/bin/env python
"""Which page draws the explorer's map: Plotly (scattergl, `include_plotlyjs=True`), Bokeh (WebGL,
`INLINE` resources) or our hand-written canvas page (src/pages), measured in headless Chromium.

    python bench/pages.py            # 10 000 and 100 000 rows, 5 hovers each (~3 min on 2 cores)
    python bench/pages.py --quick    # 2 000 rows, 3 hovers

The same synthetic map for each: Gaussian blobs of rows (path, label, frame span as hover text),
one row alone at the centre, which is hovered. Per candidate and size:
- bytes: the standalone HTML file (every script inline; no thumbnails, so all three hold the same);
- first_paint_ms: from navigation start to the first animation frame after the plot is drawn
  (ours: the page's `data-points-drawn`; Plotly: `newPlot`'s promise; Bokeh: its document idle),
  best and median of 3 loads;
- hover_ms: from the mousemove event to the first animation frame showing the hover label
  (median of several hovers, moving away in between; a frame is ~16 ms, so below that it means
  "in the next frame").
Chromium runs headless with SwiftShader's software WebGL (no GPU here). Writes bench/pages.json.
Needs selenium, Chromium and chromedriver; Plotly and Bokeh are measured where installed
(`pip install plotly bokeh`; the project itself uses neither).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from src.machine import cpu_name  # noqa: E402
from src.pages.explorer import render_explorer  # noqa: E402
from src.pages.html import packed  # noqa: E402

log = logging.getLogger("bench.pages")
CANDIDATES = ("ours", "plotly", "bokeh")
WIDTH, HEIGHT, RANGE = 1000, 700, 12.0
# per candidate: JavaScript true once the plot is drawn / once a hover label shows
READY = {
    "ours": "document.body && document.body.dataset.pointsDrawn !== undefined",
    "plotly": "window.__plotted !== undefined",
    "bokeh": "window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].is_idle",
}
_DEEP = ("function __deep(root, sel, out) { root.querySelectorAll('*').forEach(e => { if (e.matches(sel)) out.push(e);"
         " if (e.shadowRoot) __deep(e.shadowRoot, sel, out); }); return out; }")
TOOLTIP = {
    "ours": "!document.getElementById('tooltip').hidden",
    "plotly": "document.querySelector('.hoverlayer .hovertext') !== null",
    "bokeh": "__deep(document, '.bk-tooltip-content', []).some(e => e.offsetParent !== null)",
}
# viewport position of the centre row, once the plot is drawn
CENTRE = {
    "ours": "const r = document.getElementById('map').getBoundingClientRect(), p = window.explorer.screenPosition(0);"
            " return [r.left + p[0], r.top + p[1]];",
    "plotly": "const gd = document.querySelector('.js-plotly-plot'), r = gd.getBoundingClientRect(),"
              " xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;"
              " return [r.left + xa._offset + xa.l2p(0), r.top + ya._offset + ya.l2p(0)];",
    "bokeh": "const c = __deep(document, 'canvas', []).map(e => e.getBoundingClientRect())"
             ".sort((a, b) => b.width * b.height - a.width * a.height)[0];"
             " return [c.left + c.width / 2, c.top + c.height / 2];",
}


# ----------------------------------------------------------------------------- the map
def synthetic_rows(n: int, seed: int = 0) -> dict:
    """n rows in 12 Gaussian blobs around the centre, none within 1.5 of it except row 0 at (0, 0)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-8, 8, (12, 2))
    blob = rng.integers(0, 12, n)
    xy = centres[blob] + rng.normal(0, 1.2, (n, 2))
    near = np.linalg.norm(xy, axis=1) < 1.5
    xy[near] *= 2.0 / np.linalg.norm(xy[near], axis=1, keepdims=True)
    xy = np.clip(xy, -RANGE + 0.5, RANGE - 0.5).astype(np.float32)
    xy[0] = 0
    # the map spans [-RANGE, RANGE] in both axes for every candidate (our page fits its bounds)
    xy[1], xy[2] = (-RANGE, -RANGE), (RANGE, RANGE)
    video = blob * 10 + rng.integers(0, 10, n)
    window = rng.integers(0, 200, n)
    return {"xy": xy, "blob": blob, "video": video, "window": window,
            "path": [f"/data/videos/clip_{v:04d}.mp4#window{w}" for v, w in zip(video, window)],
            "label": [f"class_{b:02d}" for b in blob]}


def ours_page(rows: dict) -> str:
    n = len(rows["xy"])
    videos = sorted(set(rows["video"].tolist()))
    index = {v: i for i, v in enumerate(videos)}
    nbr = np.stack([(np.arange(n) + d) % n for d in range(1, 11)], 1)  # the page's cost, not a real k-NN
    window = rows["window"]
    columns = {
        "x": packed(rows["xy"][:, 0], "f4"), "y": packed(rows["xy"][:, 1], "f4"),
        "source": packed([index[v] for v in rows["video"]], "i4"), "label": packed(rows["blob"], "i2"),
        "cluster": packed(rows["blob"], "i2"), "thumb": packed(np.full(n, -1), "i4"),
        "window": packed(window, "i4"), "token": packed(np.full(n, -1), "i2"),
        "f0": packed(window * 16, "i4"), "f1": packed(window * 16 + 15, "i4"),
        "t0": packed(window * 16 / 30, "f4"), "t1": packed((window * 16 + 15) / 30, "f4"),
        "time": packed(window / 200, "f4"), "nbr": packed(nbr, "i4"), "sim": packed(np.full((n, 10), 60000), "u2"),
    }
    data = {"table": "synthetic", "table_rows": n, "shown": n, "model": "synthetic", "pooling": "mean+l2",
            "dim": 1024, "k": 10, "sim_steps": 65535, "color_by": "label", "thumbnails": 0, "labelled": n,
            "labels": [f"class_{b:02d}" for b in range(12)],
            "sources": [{"path": f"/data/videos/clip_{v:04d}.mp4", "kind": "video", "href": None, "group": i}
                        for i, v in enumerate(videos)],
            "groups": [{"kind": "video", "path": f"/data/videos/clip_{v:04d}.mp4"} for v in videos],
            "columns": columns, "thumbs": [], "ramp": ["#440154", "#fde725"]}
    return render_explorer(data)


def _hover_text(rows: dict) -> list[str]:
    return [f"{p}<br>label: {lab}<br>frames {w * 16}–{w * 16 + 15}"
            for p, lab, w in zip(rows["path"], rows["label"], rows["window"])]


def plotly_page(rows: dict) -> str:
    import plotly.graph_objects as go

    fig = go.Figure(go.Scattergl(x=rows["xy"][:, 0], y=rows["xy"][:, 1], mode="markers",
                                 marker={"size": 3, "color": rows["blob"], "colorscale": "Turbo"},
                                 text=_hover_text(rows), hoverinfo="text"))
    fig.update_layout(width=WIDTH, height=HEIGHT, margin={"l": 0, "r": 0, "t": 0, "b": 0},
                      xaxis={"range": [-RANGE, RANGE], "visible": False},
                      yaxis={"range": [-RANGE, RANGE], "visible": False})
    return fig.to_html(include_plotlyjs=True, full_html=True, post_script="window.__plotted = performance.now();")


def bokeh_page(rows: dict) -> str:
    from bokeh.embed import file_html
    from bokeh.models import ColumnDataSource, HoverTool, Range1d
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78"]
    source = ColumnDataSource({"x": rows["xy"][:, 0], "y": rows["xy"][:, 1], "path": rows["path"],
                               "label": rows["label"], "color": [palette[b] for b in rows["blob"]],
                               "frames": [f"{w * 16}–{w * 16 + 15}" for w in rows["window"]]})
    plot = figure(width=WIDTH, height=HEIGHT, output_backend="webgl", toolbar_location=None, min_border=0,
                  x_range=Range1d(-RANGE, RANGE), y_range=Range1d(-RANGE, RANGE))
    plot.axis.visible = False
    plot.grid.visible = False
    points = plot.scatter("x", "y", source=source, size=3, color="color")
    plot.add_tools(HoverTool(tooltips=[("path", "@path"), ("label", "@label"), ("frames", "@frames")],
                             renderers=[points]))
    return file_html(plot, INLINE, "bokeh")


BUILDERS = {"ours": ours_page, "plotly": plotly_page, "bokeh": bokeh_page}


# ----------------------------------------------------------------------------- the browser
def start_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--window-size=1200,800", "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def first_paint_ms(driver, page: Path, candidate: str) -> float:
    """Navigation start → the first animation frame after the plot is drawn, in ms."""
    watcher = ("(function () { const ready = () => { try { return !!(" + READY[candidate] + "); } catch (e) {"
               " return false; } }; function tick() { if (ready()) {"
               " requestAnimationFrame(t => { window.__painted = t; });"
               " return; } requestAnimationFrame(tick); } requestAnimationFrame(tick); })();")
    script = driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _DEEP + watcher})
    try:
        driver.get(page.as_uri())
        deadline = time.monotonic() + 120
        while (painted := driver.execute_script("return window.__painted")) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{candidate}: no plot after 120 s")
            time.sleep(0.05)
        return float(painted)
    finally:
        driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})


def _move(driver, x: float, y: float) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    action = ActionBuilder(driver)
    action.pointer_action.move_to_location(int(round(x)), int(round(y)))
    action.perform()


def hover_ms(driver, candidate: str, repeats: int) -> list[float]:
    """mousemove onto the centre row → first animation frame with its hover label, in ms, per hover."""
    driver.execute_script(_DEEP.replace("function __deep", "window.__deep = function") +
                          "; window.__moved = 0; document.addEventListener('mousemove',"
                          " e => { window.__moved = e.timeStamp; }, true);")
    x, y = driver.execute_script(_DEEP + CENTRE[candidate])
    times = []
    for _ in range(repeats):
        _move(driver, 5, 5)  # away: the label goes
        time.sleep(0.3)
        driver.execute_script("window.__shown = null; const moved0 = window.__moved; (function tick(t) {"
                              " if (window.__moved !== moved0 && (" + TOOLTIP[candidate] + "))"
                              " { window.__shown = t - window.__moved; return; } requestAnimationFrame(tick); })"
                              "(performance.now());")
        _move(driver, x, y)
        deadline = time.monotonic() + 10
        while (shown := driver.execute_script("return window.__shown")) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{candidate}: no hover label after 10 s")
            time.sleep(0.02)
        times.append(float(shown))
    return times


def measure(candidate: str, rows: dict, folder: Path, driver, repeats: int) -> dict:
    page = folder / f"{candidate}_{len(rows['xy'])}.html"
    started = time.perf_counter()
    page.write_text(BUILDERS[candidate](rows), encoding="utf-8")
    write_s = time.perf_counter() - started
    paints = [first_paint_ms(driver, page, candidate) for _ in range(3)]  # a busy machine: the best of 3
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    hovers = hover_ms(driver, candidate, repeats)
    result = {"rows": len(rows["xy"]), "bytes": page.stat().st_size, "write_s": round(write_s, 2),
              "first_paint_ms": round(min(paints), 1), "first_paint_median_ms": round(statistics.median(paints), 1),
              "first_paint_runs_ms": [round(p, 1) for p in paints],
              "hover_ms": round(statistics.median(hovers), 1), "hover_runs_ms": [round(h, 1) for h in hovers],
              "console_errors": errors}
    log.info("%s, %d rows: %.1f MB, first paint %.0f ms, hover %.0f ms", candidate, result["rows"],
             result["bytes"] / 1e6, result["first_paint_ms"], result["hover_ms"])
    return result


def run(quick: bool) -> dict:
    """Every candidate at 10 000 and 100 000 rows (quick: 2 000), in one headless Chromium."""
    sizes, repeats = ((2_000,), 3) if quick else ((10_000, 100_000), 5)
    results = []
    driver = start_browser()
    try:
        with tempfile.TemporaryDirectory(prefix="bench_pages_") as tmp:
            for n in sizes:
                rows = synthetic_rows(n)
                for candidate in CANDIDATES:
                    if candidate != "ours" and importlib.util.find_spec(candidate) is None:
                        # the libraries are only measured, never used: not in requirements*.txt
                        results.append({"candidate": candidate, "rows": n, "skipped": f"{candidate} is not installed"})
                        continue
                    results.append({"candidate": candidate, **measure(candidate, rows, Path(tmp), driver, repeats)})
        browser = driver.capabilities.get("browserVersion")
    finally:
        driver.quit()
    versions = {}
    for name in ("plotly", "bokeh", "selenium"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {"quick": quick, "cpu": cpu_name(), "platform": platform.platform(), "chromium": browser,
            "versions": versions, "results": results}


def markdown(report: dict) -> str:
    lines = ["| candidate | rows | file MB | first paint ms (best / median of 3) | hover ms |",
             "|---|---:|---:|---:|---:|"]
    for r in report["results"]:
        if "skipped" in r:
            lines.append(f"| {r['candidate']} | {r['rows']:,} | {r['skipped']} | | |")
            continue
        lines.append(f"| {r['candidate']} | {r['rows']:,} | {r['bytes'] / 1e6:.2f} | {r['first_paint_ms']:.0f} / "
                     f"{r['first_paint_median_ms']:.0f} | {r['hover_ms']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 000 rows only")
    parser.add_argument("--output", default=str(REPO / "bench" / "pages.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    report = run(args.quick)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
