#!/usr/bin/env python3
"""Draws how the costs per object grow with the repository, from the output of
`cargo bench --bench git_http` (corpus section) at several sizes: an SVG on standard
output, no libraries needed. Used by benches/growth.sh."""

import math
import re
import sys

from svg import frame, legend

SERIES = [
    # (bench row, column, label, colour, dashed)
    ("push per object", 0, "push wall time, one node", "#1f77b4", False),
    ("push per object", 1, "push wall time, 3 nodes", "#1f77b4", True),
    ("push per object", 2, "push wall time, git", "#7f7f7f", False),
    ("clone CPU per object", 0, "clone server CPU, one node", "#d62728", False),
    ("clone CPU per object", 1, "clone server CPU, 3 nodes", "#d62728", True),
    ("clone CPU per object", 2, "clone server CPU, git", "#7f7f7f", True),
]


def parse(path):
    """(objects, {row: [one node, 3 nodes, baseline]}) of one bench output."""
    objects, rows = None, {}
    for line in open(path, encoding="utf-8"):
        m = re.search(r"; (\d+) objects", line)
        if line.startswith("### many objects") and m:
            objects = int(m.group(1))
        for row, _, _, _, _ in SERIES:
            if line.startswith(row):
                rows[row] = [float(v) for v in re.findall(r"([\d.]+) us", line)]
    return objects, rows


def main(paths):
    runs = sorted(p for p in (parse(x) for x in paths) if p[0])
    if not runs:
        sys.exit("no corpus figures in " + " ".join(paths))
    w, h, left, right, top, bottom = 720, 420, 70, 230, 40, 50
    xs = [math.log10(n) for n, _ in runs]
    x0, x1 = min(xs) - 0.1, max(xs) + 0.1
    steps = 5
    top_value = max(v for _, rows in runs for vals in rows.values() for v in vals)
    ymax = math.ceil(top_value * 1.05 / steps) * steps  # whole ticks

    def px(n):
        return left + (math.log10(n) - x0) / (x1 - x0) * (w - left - right)

    def py(v):
        return h - bottom - v / ymax * (h - top - bottom)

    out = frame(
        w,
        h,
        left,
        right,
        top,
        bottom,
        "Cost per object as the repository grows (generated history; lower is better)",
        "objects pushed and cloned (log scale)",
        "microseconds per object",
    )
    for n, _ in runs:
        out.append(
            f'<text x="{px(n):.1f}" y="{h - bottom + 16}" text-anchor="middle">'
            f"{n / 1000:.1f}k</text>"
        )
    for i in range(steps + 1):
        v = ymax * i / steps
        out.append(
            f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>'
        )
        out.append(
            f'<line x1="{left}" y1="{py(v):.1f}" x2="{w - right}" y2="{py(v):.1f}" '
            'stroke="#eee"/>'
        )
    for k, (row, col, label, colour, dashed) in enumerate(SERIES):
        pts = [(n, rows[row][col]) for n, rows in runs if len(rows.get(row, [])) > col]
        if not pts:
            continue
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        path = " ".join(f"{px(n):.1f},{py(v):.1f}" for n, v in pts)
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        for n, v in pts:
            out.append(f'<circle cx="{px(n):.1f}" cy="{py(v):.1f}" r="3" fill="{colour}"/>')
        out.extend(legend(w, right, top, k, colour, label, dash))
    out.append("</svg>")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
