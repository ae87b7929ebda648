#!/usr/bin/env python3
"""Cost against N from `boson-bench ctl` JSON reports, as one SVG (no dependencies).

    benches/plot_ctl.py benches/results-ctl-sqlite.json benches/results-ctl-pg.json \
        -o benches/results-ctl.svg

Left: the server's CPU time per request (µs) at the closed-loop ceiling, routing and
heartbeats, per backend. Right: routing p99 latency (ms) at the ceiling. Both axes are
logarithmic; a flat line is a cost that does not grow with the number of nodes.
"""

import argparse
import json
import math

W, H = 960, 420
PANEL_W, PANEL_H = 380, 300
MARGIN_L, MARGIN_T = 70, 60
COLORS = {
    ("sqlite", "routing-max"): "#1f77b4",
    ("sqlite", "heartbeat-max"): "#aec7e8",
    ("postgres+redis", "routing-max"): "#d62728",
    ("postgres+redis", "heartbeat-max"): "#ff9896",
}
LABELS = {"routing-max": "routing", "heartbeat-max": "heartbeat"}


def series(runs, phase, field):
    """{backend: [(nodes, value)]} for one phase's field."""
    out = {}
    for run in runs:
        for p in run["phases"]:
            if p["name"] == phase and p["ok"] > 0 and p[field] > 0:
                out.setdefault(run["backend"], []).append((run["nodes"], p[field]))
    for points in out.values():
        points.sort()
    return out


def log_ticks(lo, hi):
    ticks = []
    e = math.floor(math.log10(lo))
    while 10**e <= hi * 1.0001:
        if 10**e >= lo / 1.0001:
            ticks.append(10**e)
        e += 1
    return ticks or [lo, hi]


def panel(x0, title, unit, lines):
    """One log-log panel at x offset x0; lines = [(label, color, [(n, v)])]."""
    pts = [p for _, _, ps in lines for p in ps]
    if not pts:
        return f'<text x="{x0 + 20}" y="{MARGIN_T + 40}">no data</text>'
    nlo, nhi = min(p[0] for p in pts), max(p[0] for p in pts)
    vlo, vhi = min(p[1] for p in pts), max(p[1] for p in pts)
    nlo, nhi = 10 ** math.floor(math.log10(nlo)), 10 ** math.ceil(math.log10(nhi))
    vlo, vhi = 10 ** math.floor(math.log10(vlo)), 10 ** math.ceil(math.log10(vhi))
    if nlo == nhi:
        nhi *= 10
    if vlo == vhi:
        vhi *= 10

    def x(n):
        return x0 + PANEL_W * (math.log10(n) - math.log10(nlo)) / (math.log10(nhi) - math.log10(nlo))

    def y(v):
        return MARGIN_T + PANEL_H * (1 - (math.log10(v) - math.log10(vlo)) / (math.log10(vhi) - math.log10(vlo)))

    svg = [f'<text x="{x0 + PANEL_W / 2}" y="{MARGIN_T - 30}" text-anchor="middle" font-weight="bold">{title}</text>']
    svg.append(f'<rect x="{x0}" y="{MARGIN_T}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#888"/>')
    for n in log_ticks(nlo, nhi):
        svg.append(f'<line x1="{x(n):.1f}" y1="{MARGIN_T}" x2="{x(n):.1f}" y2="{MARGIN_T + PANEL_H}" stroke="#eee"/>')
        svg.append(f'<text x="{x(n):.1f}" y="{MARGIN_T + PANEL_H + 16}" text-anchor="middle" font-size="11">{n:,}</text>')
    for v in log_ticks(vlo, vhi):
        svg.append(f'<line x1="{x0}" y1="{y(v):.1f}" x2="{x0 + PANEL_W}" y2="{y(v):.1f}" stroke="#eee"/>')
        svg.append(f'<text x="{x0 - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">{v:g}</text>')
    svg.append(f'<text x="{x0 + PANEL_W / 2}" y="{MARGIN_T + PANEL_H + 34}" text-anchor="middle" font-size="12">registered nodes (N)</text>')
    svg.append(f'<text x="{x0 - 50}" y="{MARGIN_T + PANEL_H / 2}" text-anchor="middle" font-size="12" transform="rotate(-90 {x0 - 50} {MARGIN_T + PANEL_H / 2})">{unit}</text>')
    for i, (label, color, ps) in enumerate(lines):
        path = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in ps)
        svg.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for n, v in ps:
            svg.append(f'<circle cx="{x(n):.1f}" cy="{y(v):.1f}" r="3" fill="{color}"/>')
        ly = MARGIN_T + 14 + 16 * i
        svg.append(f'<line x1="{x0 + 10}" y1="{ly - 4}" x2="{x0 + 30}" y2="{ly - 4}" stroke="{color}" stroke-width="2"/>')
        svg.append(f'<text x="{x0 + 35}" y="{ly}" font-size="11">{label}</text>')
    return "\n".join(svg)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="JSON files written by boson-bench ctl --json")
    parser.add_argument("-o", "--out", required=True, help="SVG to write")
    args = parser.parse_args()
    runs = []
    for path in args.reports:
        with open(path, encoding="utf-8") as f:
            runs.extend(json.load(f)["runs"])
    cpu_lines = []
    for phase in ("routing-max", "heartbeat-max"):
        for backend, ps in sorted(series(runs, phase, "server_cpu_us_per_request").items()):
            cpu_lines.append((f"{LABELS[phase]}, {backend}", COLORS.get((backend, phase), "#555"), ps))
    p99_lines = []
    for backend, ps in sorted(series(runs, "routing-max", "p99_ms").items()):
        p99_lines.append((f"routing, {backend}", COLORS.get((backend, "routing-max"), "#555"), ps))
    body = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        panel(MARGIN_L, "server CPU per request at the ceiling", "µs per request", cpu_lines),
        panel(MARGIN_L + PANEL_W + 110, "routing p99 at the ceiling", "ms", p99_lines),
        "</svg>",
    ]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(body) + "\n")


if __name__ == "__main__":
    main()
