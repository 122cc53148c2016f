"""Every figure of the project's benchmarks in one table: ``bench/RESULTS.md``.

    python3 bench/summary.py [--no-plots]

Reads what the benchmarks left behind and writes ``bench/RESULTS.md``: the
machine, one "Summary" table (each trioport figure beside OpenSSH's or asyncssh's
from the same run where there is one, and which run it came from), the plots
``bench/plot.py`` draws (run first unless ``--no-plots``), and the load and proxy
sections themselves.

Sources:

- ``bench/results/load.json`` and ``bench/results/proxy.json`` (``bench/load.py``,
  ``bench/proxy_bench.py``), and any ``bench/results/load-NAME.json`` (``bench/load.py
  --only ... --out bench/results/load-NAME.json``: some scenarios at other sizes);
- ``bench/SSH_RESULTS.md`` (``bench/run.py``: bulk throughput and connection set-up)
  and ``bench/AUTH_RESULTS.md`` (``bench/auth_bench.py``: certificates and
  heartbeats per second). Those two write markdown only, so their tables are
  read back from the markdown (:func:`markdown_tables`); a missing or reshaped
  table leaves its rows out with a note, never a wrong number.

Nothing is measured here.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

BENCH = pathlib.Path(__file__).resolve().parent
RESULTS = BENCH / "results"
SUMMARY = BENCH / "RESULTS.md"
KiB = 1024
MiB = 1024 * 1024


# --- reading the sources ---------------------------------------------------------------------


def load_json(path: pathlib.Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def markdown_tables(path: pathlib.Path) -> dict[str, list[list[str]]]:
    """Each table of a markdown file under the heading before it: heading -> rows of cells.

    The header row and the ``|---|`` rule are dropped; cells are stripped of
    surrounding spaces, ``**`` and backticks.
    """
    try:
        text = path.read_text()
    except OSError:
        return {}
    tables: dict[str, list[list[str]]] = {}
    heading = ""
    rows: list[list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            rows = None
            continue
        if line.startswith("|"):
            cells = [
                c.strip().replace("**", "").replace("`", "") for c in line.strip("|").split("|")
            ]
            if rows is None:
                rows = []
                tables[heading] = rows
                continue  # the header
            if all(re.fullmatch(r":?-+:?", c) for c in cells if c):
                continue
            rows.append(cells)
        else:
            rows = None if not line.strip() else rows
    return tables


def number(cell: str) -> float | None:
    """The first number in a cell ('401 (384 to 483)' -> 401.0); None if there is none."""
    m = re.search(r"-?\d+(?:\.\d+)?", cell.replace(",", ""))
    return float(m.group()) if m else None


def find_table(tables: dict[str, list[list[str]]], start: str) -> list[list[str]]:
    for heading, rows in tables.items():
        if heading.lower().startswith(start.lower()):
            return rows
    return []


def run_info(path: pathlib.Path) -> dict[str, str]:
    """The machine table of a results markdown file (CPU, commit, load ...)."""
    return {row[0]: row[1] for row in find_table(markdown_tables(path), "Machine") if len(row) >= 2}


def first_line_after_title(path: pathlib.Path) -> str:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[1] if len(lines) > 1 and not lines[1].startswith("#") else ""


# --- the figures -----------------------------------------------------------------------------


@dataclass
class Figure:
    """One row of the summary: trioport's figure, the reference beside it, the source."""

    what: str
    trioport: str
    reference: str
    source: str
    #: For plot.py: (label, value) pairs in one unit, trioport's first.
    values: tuple[tuple[str, float], ...] = ()
    unit: str = ""


def _fmt(x: float | None, spec: str = ".0f", unit: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{unit}"


def ssh_figures(path: pathlib.Path) -> tuple[list[Figure], list[str]]:
    """Throughput and set-up rows from run.py's markdown."""
    tables = markdown_tables(path)
    figures: list[Figure] = []
    notes: list[str] = []
    src = f"run.py ({path.name}, commit {run_info(path).get('trioport commit', '?')})"
    bulk = {(r[0], r[1]): r for r in find_table(tables, "Bulk throughput") if len(r) >= 3}
    cat = "cat >/dev/null"
    tt = bulk.get(("trioport → trioport", cat))
    ss = bulk.get(("OpenSSH ssh → OpenSSH sshd", cat))
    aa = bulk.get(("asyncssh → asyncssh", cat))
    if tt:
        t, s, a = number(tt[2]), number(ss[2]) if ss else None, number(aa[2]) if aa else None
        figures.append(
            Figure(
                "bulk throughput direct, aes128-gcm into cat, MB/s",
                _fmt(t),
                f"ssh→sshd {_fmt(s)}; asyncssh→asyncssh {_fmt(a)}",
                src,
                tuple((k, v) for k, v in (("trioport", t), ("OpenSSH", s), ("asyncssh", a)) if v),
                "MB/s",
            )
        )
    else:
        notes.append(f"{path.name}: no bulk throughput table found; its rows are left out.")
    setup = {r[0]: r for r in find_table(tables, "Connection setup") if len(r) >= 3}
    st, ss_, sa = (
        setup.get("trioport → trioport"),
        setup.get("OpenSSH ssh → OpenSSH sshd"),
        setup.get("asyncssh → asyncssh"),
    )
    if st:
        vals = [number(r[1]) if r else None for r in (st, ss_, sa)]
        figures.append(
            Figure(
                "connection set-up (handshake + auth + exec true), median ms",
                _fmt(vals[0], ".1f"),
                f"ssh→sshd {_fmt(vals[1], '.1f')}; asyncssh {_fmt(vals[2], '.1f')}",
                src,
                tuple(
                    (k, v)
                    for k, v in zip(("trioport", "OpenSSH", "asyncssh"), vals, strict=True)
                    if v
                ),
                "ms",
            )
        )
        cps = [number(r[2]) if r else None for r in (st, ss_, sa)]
        figures.append(
            Figure(
                "connections per second, 8 in parallel",
                _fmt(cps[0]),
                f"ssh→sshd {_fmt(cps[1])}; asyncssh {_fmt(cps[2])}",
                src,
            )
        )
    else:
        notes.append(f"{path.name}: no connection setup table found; its rows are left out.")
    return figures, notes


def auth_figures(path: pathlib.Path) -> tuple[list[Figure], list[str]]:
    """Certificates and heartbeats per second from auth_bench.py's markdown."""
    rows = find_table(markdown_tables(path), "Operations per second")
    src = f"auth_bench.py ({path.name}, commit {run_info(path).get('trioport commit', '?')})"
    if not rows:
        return [], [f"{path.name}: no operations table found; its rows are left out."]

    def rate(op: str, view: str, backend: str) -> float | None:
        for r in rows:
            if len(r) >= 7 and r[0].startswith(op) and r[1] == view and r[2] == backend:
                return number(r[6])
        return None

    floor = rate("bcrypt check", "one thread", "—")
    figures = [
        Figure(
            "user certificates per second (login: bcrypt cost 12 + TOTP + sign), SQLite",
            _fmt(rate("user certificate (login", "SSH API", "sqlite"), ".1f"),
            f"bcrypt floor {_fmt(floor, '.1f')}/s on one thread (no OpenSSH equivalent)",
            src,
        ),
        Figure(
            "certificates per second without a password check (sign + store + audit)",
            f"SQLite {_fmt(rate('user certificate (no password', 'in-process', 'sqlite'))};"
            f" etcd {_fmt(rate('user certificate (no password', 'in-process', 'etcd'))}",
            "—",
            src,
        ),
        Figure(
            "heartbeats per second over SSH, 16 nodes",
            f"SQLite {_fmt(rate('heartbeat', 'SSH API', 'sqlite'))};"
            f" etcd {_fmt(rate('heartbeat', 'SSH API', 'etcd'))}",
            "—",
            src,
        ),
    ]
    return figures, []


def _row(rows: list[dict[str, Any]], start: str) -> dict[str, Any] | None:
    return next((r for r in rows if r.get("name", "").startswith(start) and "error" not in r), None)


def proxy_figures(doc: dict[str, Any] | None) -> tuple[list[Figure], list[str]]:
    if doc is None:
        return [], ["bench/results/proxy.json is missing: run bench/proxy_bench.py."]
    src = f"proxy_bench.py ({'quick' if doc.get('quick') else 'full'}, {doc.get('started', '?')})"
    lat, thr = doc.get("latency", []), doc.get("throughput", [])
    figures: list[Figure] = []
    tsh = _row(lat, "tsh ssh NODE true")
    jump = _row(lat, "OpenSSH ssh -J sshd")
    via = _row(lat, "OpenSSH ssh -J trioport")
    lib = _row(lat, "library tsh uses")
    floor = _row(lat, "floor: tsh --help")

    def ms(r: dict[str, Any] | None) -> float | None:
        return r["median_ms"] if r else None

    figures.append(
        Figure(
            "`tsh ssh NODE true` latency, median ms (fresh process)",
            _fmt(ms(tsh), ".0f"),
            f"`ssh -J` sshd→sshd {_fmt(ms(jump), '.0f')}; `ssh -J` through trioport"
            f" {_fmt(ms(via), '.0f')}",
            src,
            tuple(
                (k, v)
                for k, v in (
                    ("tsh ssh", ms(tsh)),
                    ("ssh -J trioport", ms(via)),
                    ("ssh -J sshd", ms(jump)),
                    ("python + tsh import", ms(floor)),
                    ("library, no start-up", ms(lib)),
                )
                if v
            ),
            "ms",
        )
    )
    figures.append(
        Figure(
            "proxy + node + exec true from a running process (no start-up), median ms",
            _fmt(ms(lib), ".0f"),
            f"Python start-up + tsh imports alone: {_fmt(ms(floor), '.0f')}",
            src,
        )
    )
    direct = _row(thr, "trioport library, direct")
    through = _row(thr, "trioport library, through")
    s_direct = _row(thr, "OpenSSH ssh -> sshd directly")
    s_jump = _row(thr, "OpenSSH ssh -J sshd")

    def mbps(r: dict[str, Any] | None) -> float | None:
        return r["median_mbps"] if r else None

    figures.append(
        Figure(
            f"throughput direct → through the proxy, MB/s ({doc.get('size', 0) >> 20} MiB)",
            f"{_fmt(mbps(direct))} → {_fmt(mbps(through))}",
            f"ssh→sshd {_fmt(mbps(s_direct))} → ssh -J sshd→sshd {_fmt(mbps(s_jump))}",
            src,
            tuple(
                (k, v)
                for k, v in (
                    ("trioport direct", mbps(direct)),
                    ("trioport via proxy", mbps(through)),
                    ("OpenSSH direct", mbps(s_direct)),
                    ("OpenSSH via jump", mbps(s_jump)),
                )
                if v
            ),
            "MB/s",
        )
    )
    return figures, []


def load_figures(doc: dict[str, Any] | None) -> tuple[list[Figure], list[str]]:
    if doc is None:
        return [], ["bench/results/load.json is missing: run bench/load.py."]
    size = "quick" if doc.get("quick") else "sizes as in the row"
    src = f"load.py ({size}, {doc.get('started', '?')})"
    figures: list[Figure] = []
    notes: list[str] = []
    s = doc.get("sessions") or {}
    ossh_s = doc.get("sshd_sessions") or {}
    ossh_i = doc.get("sshd_idle") or {}
    if s and "error" not in s:
        child = s.get("children_pss_per_session") or 0
        per = s["rss_per_session"] + child
        o = ossh_s.get("pss_per_connection") if "error" not in ossh_s else None
        figures.append(
            Figure(
                "concurrent pty sessions held through one proxy (errors)",
                f"{s['opened']} of {s['sessions']} ({len(s['errors'])} errors)",
                "—",
                src,
            )
        )
        figures.append(
            Figure(
                "keystroke echo latency under that load, p99 ms (p50)",
                f"{_fmt(s['echo_ms']['p99'], '.0f')} ({_fmt(s['echo_ms']['p50'], '.0f')})",
                "—",
                src,
            )
        )
        figures.append(
            Figure(
                "memory per pty session: server RSS + its cat's PSS, KiB",
                f"{_fmt(s['rss_per_session'] / KiB)} + {_fmt(child / KiB)}",
                f"sshd: {_fmt(o / KiB if o else None)} PSS per `ssh -tt HOST cat`"
                f" ({ossh_s.get('connections', '?')} held)",
                src,
                tuple((k, v / KiB) for k, v in (("trioport", per), ("OpenSSH sshd", o)) if v),
                "KiB",
            )
        )
    elif s:
        notes.append(f"sessions failed: {s['error']}")
    i = doc.get("idle") or {}
    if i and "error" not in i:
        o = ossh_i.get("pss_per_connection") if "error" not in ossh_i else None
        figures.append(
            Figure(
                "memory per idle authenticated connection (proxy + node), KiB",
                _fmt(i["rss_per_connection"] / KiB),
                f"sshd: {_fmt(o / KiB if o else None)} PSS per `ssh -N`"
                f" ({ossh_i.get('connections', '?')} held)",
                src,
                tuple(
                    (k, v / KiB)
                    for k, v in (("trioport", i["rss_per_connection"]), ("OpenSSH sshd", o))
                    if v
                ),
                "KiB",
            )
        )
    c = doc.get("cycles") or {}
    if c and "error" not in c:
        figures.append(
            Figure(
                "connect/auth/exec/exit cycles: errors, audit events, leaks",
                f"{c['cycles']} cycles, {len(c['errors'])} errors, {c['exec_events']} exec"
                f" events; fds {c['baseline']['fds']}→{c['after']['fds']}, processes"
                f" {c['baseline']['children']}→{c['after']['children']}, temp files"
                f" {c['baseline']['tmp_files']}→{c['after']['tmp_files']}; RSS"
                f" {_rss_growth(c.get('rss_trace') or [])}",
                "—",
                src,
            )
        )
    for backend, n in (doc.get("nodes") or {}).items():
        if "error" in n:
            notes.append(f"nodes on {backend} failed: {n['error']}")
            continue
        if n.get("failed"):
            notes.append(
                f"{n['failed']} of the {n['failed'] + n['heartbeats']} heartbeats of the burst"
                f" on {backend} ({n['connected']} nodes at once) failed, for example:"
                f" {n['errors'][-1] if n['errors'] else '?'}"
            )
        figures.append(
            Figure(
                f"nodes joined and connected to one auth service, {backend}",
                f"{n['connected']} of {n['nodes']} (joins {n['joins_per_second']:.0f}/s);"
                f" auth memory {_fmt((n.get('auth_rss_per_node') or 0) / KiB)} KiB per node",
                "—",
                src,
            )
        )
        if n.get("rounds"):
            figures.append(
                Figure(
                    f"heartbeats per second, {n['nodes']} simulated nodes at once, {backend}",
                    f"{_fmt(n['heartbeats_per_second'])} ({n.get('failed', 0)} failed)",
                    "—",
                    src,
                )
            )
        for p in n.get("then") or []:
            if p["failed"]:
                notes.append(
                    f"{p['failed']} of the {p['failed'] + p['heartbeats']} heartbeats of"
                    f" {n['connected']} nodes on {backend} at a node's pace (offered"
                    f" {p['offered_per_second']:.0f}/s) failed, for example:"
                    f" {p['errors'][0] if p['errors'] else '?'}"
                )
            figures.append(
                Figure(
                    f"{n['connected']} nodes heartbeating every {p['interval']:.0f} s,"
                    f" {backend}: offered → absorbed per second",
                    f"{_fmt(p['offered_per_second'])} → {_fmt(p['heartbeats_per_second'])}"
                    f" ({p['failed']} of {p['failed'] + p['heartbeats']} failed)",
                    "—",
                    src,
                )
            )
    st = doc.get("stalled") or {}
    if st and "error" not in st:
        figures.append(
            Figure(
                "stalled reader: server RSS growth (after the first third), MiB",
                f"{st['rss_growth'] / MiB:+.1f} ({st['rss_growth_last_two_thirds'] / MiB:+.1f})",
                "—",
                src,
            )
        )
    return figures, notes


def _rss_growth(trace: list[list[int]]) -> str:
    """RSS growth along a cycles run: from its first twentieth to its last, per cycle,
    then over the second half alone (whether it levels off)."""
    if len(trace) < 2:
        return "—"
    (n0, r0), (n1, r1) = trace[0], trace[-1]
    per = (r1 - r0) / max(1, n1 - n0)
    text = f"{(r1 - r0) / MiB:+.1f} MiB from cycle {n0} to {n1} ({per / KiB:+.1f} KiB a cycle)"
    half = [(n, r) for n, r in trace if n >= n1 // 2]
    if len(half) >= 2 and half[0][0] > n0:
        (h0, s0), (_, s1) = half[0], half[-1]
        text += f", {(s1 - s0) / MiB:+.1f} MiB from cycle {h0} to {n1}"
    return text


def collect() -> tuple[list[Figure], list[str], dict[str, Any]]:
    """Every figure, the notes about missing sources, and the raw JSON documents."""
    load = load_json(RESULTS / "load.json")
    proxy = load_json(RESULTS / "proxy.json")
    # Runs of some scenarios at other sizes, kept beside the whole run.
    extra = [load_json(path) for path in sorted(RESULTS.glob("load-*.json"))]
    figures: list[Figure] = []
    notes: list[str] = []
    for fs, ns in (
        ssh_figures(BENCH / "SSH_RESULTS.md"),
        proxy_figures(proxy),
        auth_figures(BENCH / "AUTH_RESULTS.md"),
        load_figures(load),
        *(load_figures(doc) for doc in extra if doc),
    ):
        figures += fs
        notes += ns
    return figures, notes, {"load": load, "proxy": proxy}


# --- the file ------------------------------------------------------------------------------------

PLOTS = [
    ("throughput.png", "Bulk throughput: direct and through the proxy or jump host"),
    ("latency.png", "Latency of `true` through the proxy, by client"),
    ("memory.png", "Memory per session and per idle connection, trioport beside sshd"),
    ("heartbeats.png", "Heartbeats per second, SQLite and etcd"),
    ("stalled.png", "Server memory while a reader is stalled"),
]


def render(figures: list[Figure], notes: list[str], docs: dict[str, Any]) -> str:
    machine = (docs.get("load") or docs.get("proxy") or {}).get("machine") or run_info(
        BENCH / "SSH_RESULTS.md"
    )
    lines = [
        "# trioport benchmark summary",
        "",
        "Every figure of the benchmarks in one table, each beside OpenSSH's or asyncssh's"
        " from the same run where one exists. Written by `python3 bench/summary.py` from"
        " `bench/results/*.json`, `bench/SSH_RESULTS.md` and `bench/AUTH_RESULTS.md`; the"
        " source column says which run each figure came from (they ran at different times"
        " and commits). **The machine is shared with other work and noisy** (see the load"
        " averages in each section): compare figures of the same run, not across runs."
        " docs/benchmarks.md says how to run each benchmark at full size.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    for key in (
        "CPU",
        "CPU features",
        "cores (os.cpu_count)",
        "kernel",
        "Python",
        "cryptography",
        "trio",
        "OpenSSH",
    ):
        if key in machine:
            lines.append(f"| {key} | {machine[key]} |")
    lines += [
        "",
        "## Summary",
        "",
        "| figure | trioport | beside it (same run) | source |",
        "|---|---|---|---|",
    ]
    for f in figures:
        lines.append(f"| {f.what} | **{f.trioport}** | {f.reference} | {f.source} |")
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    lines += ["", "## Plots", ""]
    for name, title in PLOTS:
        if (BENCH / "plots" / name).exists():
            lines += [f"![{title}](plots/{name})", ""]
    sections = [RESULTS / "proxy.md", RESULTS / "load.md", *sorted(RESULTS.glob("load-*.md"))]
    for path in sections:
        if path.exists():
            text = path.read_text().strip()
            lines += ["", text, ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-plots", action="store_true", help="do not run plot.py first")
    parser.add_argument("--out", type=pathlib.Path, default=SUMMARY)
    args = parser.parse_args()
    if not args.no_plots:
        subprocess.run([sys.executable, str(BENCH / "plot.py")], check=False, timeout=300)
    figures, notes, docs = collect()
    text = render(figures, notes, docs)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
