#!/usr/bin/env python3
"""Draws the store's space over time from the `space` lines of
`cargo bench -p repospanner-storage compact` (bytes on disk and live bytes per round of
the workload): an SVG on standard output, no libraries needed.

    cargo bench -p repospanner-storage compact | tee /tmp/compact.txt
    python3 benches/space_plot.py /tmp/compact.txt > benches/space.svg
"""

import sys

from svg import frame, legend


def parse(path):
    rows = []
    for line in open(path, encoding="utf-8"):
        f = line.split()
        if len(f) == 4 and f[0] == "space" and f[1].isdigit():
            rows.append((int(f[1]), float(f[2]), float(f[3])))
    return rows


def main(path):
    rows = parse(path)
    if not rows:
        sys.exit("no space lines in " + path)
    w, h, left, right, top, bottom = 720, 380, 70, 170, 40, 50
    xmax = max(r[0] for r in rows) or 1
    steps = 5
    top_value = max(max(r[1], r[2]) for r in rows)
    unit = 10 ** max(0, len(str(int(top_value))) - 1)
    ymax = max(unit, -(-top_value * 1.05 // unit) * unit)

    def px(x):
        return left + x / xmax * (w - left - right)

    def py(v):
        return h - bottom - v / ymax * (h - top - bottom)

    out = frame(
        w,
        h,
        left,
        right,
        top,
        bottom,
        "A shard's log over a workload of pushes, refusals and deletions, compacting",
        "round",
        "MiB",
    )
    for i in range(steps + 1):
        v = ymax * i / steps
        x = xmax * i / steps
        out.append(f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
        out.append(
            f'<line x1="{left}" y1="{py(v):.1f}" x2="{w - right}" y2="{py(v):.1f}" stroke="#eee"/>'
        )
        out.append(
            f'<text x="{px(x):.1f}" y="{h - bottom + 16}" text-anchor="middle">{x:.0f}</text>'
        )
    for k, (col, label, colour) in enumerate(
        [(1, "on disk", "#1f77b4"), (2, "live", "#2ca02c")]
    ):
        pts = " ".join(f"{px(r[0]):.1f},{py(r[col]):.1f}" for r in rows)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out.extend(legend(w, right, top, k, colour, label))
    out.append("</svg>")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
