#!/usr/bin/env python3
"""chart.py — draw benches/results.svg from benches/results.json (written by report.py).

  chart.py [results.json] [results.svg]

Two horizontal bar charts, hand-written SVG (no matplotlib): median requests/s per target and
peak RSS (MiB, largest over rounds) per target. weixin-fcgi bars are highlighted; targets that
were skipped or failed their check are listed with the reason instead of a bar."""
import json
import os
import sys
from xml.sax.saxutils import escape

W = 820
LABEL_W = 190
BAR_W = 430
ROW_H = 24
BAR_H = 16
COLORS = {"weixin": "#2a9d4b", "fixed": "#9aa5b1", "other": "#4a78b5"}


def color(name, fixed):
    if name.startswith("weixin-fcgi"):
        return COLORS["weixin"]
    return COLORS["fixed"] if fixed else COLORS["other"]


def fmt(v, unit):
    if unit == "req/s":
        return f"{v:,.0f} req/s"
    return f"{v:,.1f} MiB"


def panel(y0, title, rows, unit):
    """rows: (label, value or None, reason, colour, suffix)"""
    out = [f'<text x="10" y="{y0 + 18}" class="t">{escape(title)}</text>']
    vmax = max([r[1] for r in rows if r[1] is not None] or [1])
    y = y0 + 32
    for label, value, reason, col, suffix in rows:
        out.append(f'<text x="{LABEL_W - 8}" y="{y + BAR_H - 3}" class="l">{escape(label)}</text>')
        if value is None:
            out.append(f'<text x="{LABEL_W}" y="{y + BAR_H - 3}" class="s">{escape(reason)}</text>')
        else:
            w = max(1.0, BAR_W * value / vmax)
            out.append(f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR_H}" fill="{col}"/>')
            out.append(f'<text x="{LABEL_W + w + 6:.1f}" y="{y + BAR_H - 3}" class="v">'
                       f'{escape(fmt(value, unit) + suffix)}</text>')
        y += ROW_H
    return out, y


def render(data, path):
    targets = data["summary"]
    rps_rows, rss_rows = [], []
    for t in targets:
        name, fixed = t["target"], t.get("fixed", False)
        reason = (t.get("reason") or "no result").split(" (log:")[0]
        reason = reason if len(reason) <= 75 else reason[:72] + "…"
        rps = t.get("rps_median")
        suffix = f"  ({t['ratio_median']:.2f}× floor)" if t.get("ratio_median") is not None else ""
        rps_rows.append((name, rps, reason, color(name, fixed), suffix))
        peak = t.get("peak_kib_max")
        rss_suffix = "  (nginx itself)" if name == "nginx-return" else ""
        rss_rows.append((name, peak / 1024 if peak else None, reason, color(name, fixed), rss_suffix))
    meta = data.get("meta", {})
    parts, y = panel(34, "Requests per second (median over rounds; higher is better)", rps_rows, "req/s")
    parts2, y = panel(y + 12, "Peak RSS of the app side, all processes (MiB; lower is better)", rss_rows, "MiB")
    h = y + 34
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" '
            f'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">')
    style = ('<style>.h{font-size:15px;font-weight:bold}.t{font-size:13px;font-weight:bold}'
             '.l{font-size:12px;text-anchor:end}.v{font-size:11px}.s{font-size:11px;fill:#a33;font-style:italic}'
             '.f{font-size:10px;fill:#666}</style>')
    title = "weixin-fcgi benchmark: WeChat text message, POST through nginx (loopback)"
    foot = (f"{meta.get('date', '')} · {meta.get('nproc', '?')} CPU {meta.get('cpu', '')} · "
            f"{meta.get('settings', '')}")
    svg = [head, style, f'<rect width="{W}" height="{h}" fill="white"/>',
           f'<text x="10" y="20" class="h">{escape(title)}</text>', *parts, *parts2,
           f'<text x="10" y="{h - 12}" class="f">{escape(foot)}</text>', "</svg>"]
    with open(path, "w") as f:
        f.write("\n".join(svg) + "\n")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "results.json")
    dst = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "results.svg")
    with open(src) as f:
        render(json.load(f), dst)


if __name__ == "__main__":
    main()
