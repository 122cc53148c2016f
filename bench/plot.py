"""Draw the benchmark figures into ``bench/plots/*.png`` (matplotlib, headless).

    python3 bench/plot.py

Reads the same sources as ``bench/summary.py`` (:func:`summary.collect`) plus the
raw series in ``bench/results/load.json`` (the stalled reader's memory samples),
and draws:

- ``throughput.png``: bulk MB/s, trioport and OpenSSH, direct and through the proxy
  or jump host (``proxy_bench.py``), and direct beside asyncssh (``run.py``);
- ``latency.png``: milliseconds to run ``true`` through the proxy by client, with
  the floors that explain tsh's figure;
- ``memory.png``: KiB per pty session and per idle connection, trioport beside sshd;
- ``heartbeats.png``: heartbeats per second by backend and run;
- ``stalled.png``: the server's resident memory while a reader is stalled.

A figure whose source is missing is skipped. matplotlib is a benchmark extra,
not a runtime dependency of trioport.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

BENCH = pathlib.Path(__file__).resolve().parent
PLOTS = BENCH / "plots"
sys.path.insert(0, str(BENCH))

import summary  # noqa: E402

COLOURS = {"trioport": "#2b6cb0", "OpenSSH": "#c05621", "asyncssh": "#718096"}


def _colour(label: str) -> str:
    for key, colour in COLOURS.items():
        if key.lower() in label.lower():
            return colour
    if label.startswith(("tsh", "library", "python")):
        return COLOURS["trioport"]
    if "ssh" in label:
        return COLOURS["OpenSSH"]
    return "#4a5568"


def _bars(ax: Any, values: list[tuple[str, float]], unit: str, title: str) -> None:
    labels = [k for k, _ in values]
    numbers = [v for _, v in values]
    bars = ax.barh(labels, numbers, color=[_colour(k) for k in labels])
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.set_title(title, fontsize=10)
    for bar, v in zip(bars, numbers, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.0f}", va="center")
    ax.margins(x=0.2)


def _figure_values(figures: list[summary.Figure], start: str) -> summary.Figure | None:
    return next((f for f in figures if f.what.startswith(start) and f.values), None)


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(exist_ok=True)
    figures, _notes, docs = summary.collect()
    note = "shared, noisy 2-core machine; compare bars of one run"
    drawn = []

    # Throughput: the proxy run's four paths, and run.py's direct comparison.
    proxy = _figure_values(figures, "throughput direct")
    direct = _figure_values(figures, "bulk throughput direct")
    panels = [f for f in (proxy, direct) if f]
    if panels:
        fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.2 + 1.2 * len(panels)))
        axes = [axes] if len(panels) == 1 else list(axes)
        for ax, f in zip(axes, panels, strict=True):
            _bars(ax, list(f.values), f.unit, f"{f.what}\n[{f.source}]")
        fig.suptitle(f"Bulk throughput ({note})", fontsize=9)
        fig.tight_layout()
        fig.savefig(PLOTS / "throughput.png", dpi=100)
        plt.close(fig)
        drawn.append("throughput.png")

    lat = _figure_values(figures, "`tsh ssh NODE true` latency")
    if lat:
        fig, ax = plt.subplots(figsize=(8, 3.2))
        _bars(ax, list(lat.values), "ms (median)", f"Run `true` through the proxy\n[{lat.source}]")
        fig.suptitle(note, fontsize=9)
        fig.tight_layout()
        fig.savefig(PLOTS / "latency.png", dpi=100)
        plt.close(fig)
        drawn.append("latency.png")

    mem = [
        f
        for f in (
            _figure_values(figures, "memory per pty session"),
            _figure_values(figures, "memory per idle"),
        )
        if f
    ]
    if mem:
        fig, axes = plt.subplots(1, len(mem), figsize=(5 * len(mem), 3))
        axes = [axes] if len(mem) == 1 else list(axes)
        for ax, f in zip(axes, mem, strict=True):
            _bars(ax, list(f.values), "KiB", f.what.split(":")[0].replace(", KiB", ""))
        fig.suptitle(
            f"Memory (trioport: server RSS delta; sshd: PSS) [{mem[0].source}]", fontsize=9
        )
        fig.tight_layout()
        fig.savefig(PLOTS / "memory.png", dpi=100)
        plt.close(fig)
        drawn.append("memory.png")

    beats: list[tuple[str, float]] = []
    load = docs.get("load") or {}
    for backend, n in (load.get("nodes") or {}).items():
        if "error" not in n:
            beats.append((f"{n['nodes']} nodes at once, {backend}", n["heartbeats_per_second"]))
            for p in n.get("then") or []:
                beats.append(
                    (
                        f"{n['connected']} nodes every {p['interval']:.0f} s, {backend}"
                        f" (offered {p['offered_per_second']:.0f})",
                        p["heartbeats_per_second"],
                    )
                )
    for f in figures:
        if f.what.startswith("heartbeats per second over SSH"):
            for part in f.trioport.split(";"):
                name, _, value = part.strip().partition(" ")
                number = summary.number(value)
                if number:
                    beats.append((f"16 nodes (auth_bench), {name.lower()}", number))
    if beats:
        fig, ax = plt.subplots(figsize=(8, 2.8))
        _bars(ax, beats, "heartbeats per second", "Heartbeats absorbed by one auth service")
        fig.suptitle(note, fontsize=9)
        fig.tight_layout()
        fig.savefig(PLOTS / "heartbeats.png", dpi=100)
        plt.close(fig)
        drawn.append("heartbeats.png")

    stalled = load.get("stalled") or {}
    if stalled.get("samples"):
        xs = [t for t, _ in stalled["samples"]]
        ys = [r / (1024 * 1024) for _, r in stalled["samples"]]
        fig, ax = plt.subplots(figsize=(8, 3))
        ax.plot(xs, ys, marker=".", color=COLOURS["trioport"])
        ax.axhline(stalled["baseline"]["rss"] / (1024 * 1024), linestyle="--", color="#a0aec0")
        ax.set_xlabel("seconds since `yes` started")
        ax.set_ylabel("server RSS, MiB")
        ax.set_ylim(bottom=0)
        ax.set_title("A client stops reading `yes`: the server's memory levels off", fontsize=10)
        fig.tight_layout()
        fig.savefig(PLOTS / "stalled.png", dpi=100)
        plt.close(fig)
        drawn.append("stalled.png")

    print("drew " + (", ".join(drawn) if drawn else "nothing (no results yet)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
