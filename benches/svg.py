"""The frame and legend of the SVG charts the bench scripts draw (growth_plot.py,
space_plot.py): plain SVG text, no libraries needed."""


def frame(w, h, left, right, top, bottom, title, xlabel, ylabel):
    """The opening of a chart: canvas, title, axes and axis labels."""
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14">{title}</text>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>',
        f'<text x="{(left + w - right) / 2}" y="{h - 12}" text-anchor="middle">{xlabel}</text>',
        f'<text x="16" y="{(top + h - bottom) / 2}" transform="rotate(-90 16 '
        f'{(top + h - bottom) / 2})" text-anchor="middle">{ylabel}</text>',
    ]


def legend(w, right, top, k, colour, label, dash=""):
    """The `k`th legend entry, right of the plot."""
    ly = top + 10 + k * 20
    return [
        f'<line x1="{w - right + 15}" y1="{ly}" x2="{w - right + 45}" y2="{ly}" '
        f'stroke="{colour}" stroke-width="2"{dash}/>',
        f'<text x="{w - right + 50}" y="{ly + 4}">{label}</text>',
    ]
