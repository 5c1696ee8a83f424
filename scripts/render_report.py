"""Render a ``qingbert report`` page in headless Chromium and check that its charts show.

    python scripts/render_report.py RUN_DIR/report.html --out report.png

The page is rendered from a copy with one extra CSS rule that outlines every <img> in magenta (an outline takes no
room, so the layout is the report's own).  In the screenshot each outline is found again, and inside it the chart
must be there: enough non-white pixels, many colours, and coloured (not grey) pixels -- the curves and markers.
The page as a whole must not be blank.  Exit status 0 when every chart shows, 1 when one does not, 2 when Chromium
cannot be run.  Independent of the test suite: CI machines may have no Chromium (``--install`` runs
``apt-get install -y chromium`` on Debian).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

OUTLINE = 4  # px of the magenta outline around each chart
MARK = f"<style>img{{outline:{OUTLINE}px solid #ff00ff;outline-offset:0}}</style>"


def find_chromium(install: bool) -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if install:
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=False)
        if shutil.which("chromium"):
            return shutil.which("chromium")
    sys.exit("render_report: no chromium or chromium-browser on PATH (apt-get install -y chromium, or pass --install)")


def count_images(page: str) -> int:
    class Imgs(HTMLParser):
        n = 0

        def handle_starttag(self, tag, attrs):
            self.n += tag == "img"

    p = Imgs()
    p.feed(page)
    return p.n


def screenshot(chromium: str, page: Path, out: Path, width: int, height: int) -> np.ndarray:
    """The page rendered at width x height CSS pixels (scale 1), as an RGB array."""
    from PIL import Image

    cmd = [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--mute-audio",
           "--force-device-scale-factor=1", "--virtual-time-budget=5000", f"--window-size={width},{height}",
           f"--screenshot={out}", page.resolve().as_uri()]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    if not out.is_file():
        sys.stderr.write(res.stderr[-3000:])
        print(f"render_report: chromium wrote no screenshot (exit status {res.returncode})", file=sys.stderr)
        sys.exit(2)
    return np.asarray(Image.open(out).convert("RGB")).astype(np.int16)


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D array."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def find_charts(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of the inside of each magenta outline, top to bottom."""
    magenta = (rgb[..., 0] > 230) & (rgb[..., 1] < 40) & (rgb[..., 2] > 230)
    edge_rows = runs(magenta.sum(axis=1) > 60)  # the outlines' top and bottom edges: long magenta rows
    boxes = []
    for (t0, t1), (b0, _) in zip(edge_rows[0::2], edge_rows[1::2]):
        cols = np.flatnonzero(magenta[t0:t1].any(axis=0))
        boxes.append((t1, b0, cols.min() + OUTLINE, cols.max() + 1 - OUTLINE))
    return boxes


def measure(rgb: np.ndarray) -> dict:
    """What is drawn in a region: share of non-white pixels, distinct colours, coloured (saturated) pixels."""
    flat = rgb.reshape(-1, 3)
    ink = flat.min(axis=1) < 235
    saturated = (flat.max(axis=1) - flat.min(axis=1)) > 60
    colours = len(np.unique(flat.astype(np.int32) @ np.array([65536, 256, 1], dtype=np.int32)))
    return {"ink": float(ink.mean()), "colours": colours, "coloured_px": int(saturated.sum())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html", type=Path, help="a report.html")
    ap.add_argument("--out", type=Path, default=Path("report.png"), help="the screenshot (default report.png)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=4000, help="window height; doubled while charts fall below it")
    ap.add_argument("--install", action="store_true", help="apt-get install -y chromium when it is missing")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = ap.parse_args()
    if args.out.exists() and not args.overwrite:
        sys.exit(f"render_report: {args.out} exists (pass --overwrite to replace it)")

    page = args.html.read_text(encoding="utf-8")
    expected = count_images(page)
    chromium = find_chromium(args.install)
    with tempfile.TemporaryDirectory() as tmp:
        marked = Path(tmp) / "marked.html"
        marked.write_text(re.sub(r"</head>", MARK + "</head>", page, count=1), encoding="utf-8")
        height = args.height
        while True:
            rgb = screenshot(chromium, marked, Path(tmp) / "marked.png", args.width, height)
            boxes = find_charts(rgb)
            if len(boxes) >= expected or height >= 32000:
                break
            height *= 2  # charts below the window: a taller one
        screenshot(chromium, args.html, Path(tmp) / "page.png", args.width, height)  # the report as it is
        shutil.move(str(Path(tmp) / "page.png"), str(args.out))

    whole = measure(rgb)
    print(f"{args.out}: {rgb.shape[1]}x{rgb.shape[0]} px, {100 * whole['ink']:.1f}% non-white, "
          f"{whole['colours']} colours; {len(boxes)} of {expected} charts found")
    problems = [] if whole["ink"] > 0.01 and whole["colours"] > 50 else ["the page is blank"]
    if len(boxes) < expected:
        problems.append(f"only {len(boxes)} of the page's {expected} charts are in the screenshot")
    for i, (top, bottom, left, right) in enumerate(boxes):
        m = measure(rgb[top:bottom, left:right])
        ok = bottom - top > 50 and right - left > 100 and m["ink"] > 0.01 and m["colours"] > 30 \
            and m["coloured_px"] > 100
        print(f"  chart {i + 1}: {right - left}x{bottom - top} px at y={top}, {100 * m['ink']:.1f}% non-white, "
              f"{m['colours']} colours, {m['coloured_px']} coloured px: {'ok' if ok else 'NOT SHOWN'}")
        if not ok:
            problems.append(f"chart {i + 1} (y={top}) does not show")
    for p in problems:
        print(f"render_report: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
