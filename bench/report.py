"""The benchmark's results and their Markdown report (bench/SSH_RESULTS.md).

Throughput is in MB/s (10^6 bytes per second). CPU columns say what a row cost
in CPU time, client and server separately, which moves far less than wall-clock
throughput when other work shares the machine.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from benchlib import KEX, SUITES

#: (client, server, view) for the bulk rows, in table order.
BULK_PAIRS = [
    ("trioport", "trioport", "cat"),
    ("trioport", "sshd", "cat"),
    ("ssh", "trioport", "cat"),
    ("ssh", "sshd", "cat"),
    ("asyncssh", "asyncssh", "cat"),
    ("trioport", "trioport", "sink"),
    ("ssh", "trioport", "sink"),
    ("asyncssh", "asyncssh", "sink"),
]
FLOOR = ("floor", "floor", "frames")
SETUP_PAIRS = [
    ("trioport", "trioport"),
    ("trioport", "sshd"),
    ("ssh", "trioport"),
    ("ssh", "sshd"),
    ("asyncssh", "asyncssh"),
]
PARALLEL = 8

NAMES = {
    "trioport": "trioport",
    "sshd": "OpenSSH sshd",
    "ssh": "OpenSSH ssh",
    "asyncssh": "asyncssh",
}
SHORT = {
    "aes128-gcm@openssh.com": "aes128-gcm",
    "chacha20-poly1305@openssh.com": "chacha20-poly1305",
    "aes128-ctr": "aes128-ctr + hmac-sha2-256-etm",
}
GCM = SUITES[0][0]


@dataclass
class Sample:
    """One bulk run."""

    mbps: float
    #: CPU seconds per GB moved, by the client process(es) and by the server side.
    client_cpu: float
    server_cpu: float


@dataclass
class SetupRow:
    median_ms: float
    cps: float
    #: CPU milliseconds per connection in the parallel run, client and server side.
    client_cpu_ms: float
    server_cpu_ms: float


BulkKey = tuple[str, str, str, str]  # client, server, view, cipher


@dataclass
class Results:
    bulk: dict[BulkKey, list[Sample] | str] = field(default_factory=dict)
    #: Every repetition of a setup row, in order (or why there is none).
    setup: dict[tuple[str, str], list[SetupRow] | str] = field(default_factory=dict)

    def setup_median(self, client: str, server: str) -> SetupRow | None:
        """The median of each setup figure over the repetitions."""
        rows = self.setup.get((client, server))
        if not isinstance(rows, list) or not rows:
            return None
        return SetupRow(
            median_ms=statistics.median(r.median_ms for r in rows),
            cps=statistics.median(r.cps for r in rows),
            client_cpu_ms=statistics.median(r.client_cpu_ms for r in rows),
            server_cpu_ms=statistics.median(r.server_cpu_ms for r in rows),
        )

    def mbps(self, client: str, server: str, view: str, cipher: str) -> float | None:
        samples = self.bulk.get((client, server, view, cipher))
        if isinstance(samples, list) and samples:
            return statistics.median(s.mbps for s in samples)
        return None


@dataclass
class RunInfo:
    quick: bool
    size: int
    repeat: int
    setup_count: int
    elapsed: float
    command: str
    machine: dict[str, str]


def human_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def _failed(value: object) -> str | None:
    if value is None:
        return "not run"
    if isinstance(value, str):
        return "skipped" if value.startswith("skipped") else "error"
    return None


def _mbps_cell(value: list[Sample] | str | None) -> str:
    if (failed := _failed(value)) is not None or not value:
        return failed or "not run"
    assert isinstance(value, list)
    rates = [s.mbps for s in value]
    text = f"{statistics.median(rates):.0f}"
    if len(rates) > 1:
        text += f" ({min(rates):.0f} to {max(rates):.0f})"
    return text


def _cpu_cell(value: list[Sample] | str | None) -> str:
    if (failed := _failed(value)) is not None or not value:
        return failed or "not run"
    assert isinstance(value, list)
    client = statistics.median(s.client_cpu for s in value)
    server = statistics.median(s.server_cpu for s in value)
    return f"{client:.2f} + {server:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def render(results: Results, info: RunInfo) -> str:
    out: list[str] = []
    kind = "QUICK run (--quick)" if info.quick else "Full run"
    out.append("# trioport SSH benchmark results\n")
    out.append(
        f"{kind}: {human_size(info.size)} per bulk run, {info.repeat} repetition(s) "
        f"(interleaved); setup: {info.setup_count} sequential connections, then "
        f"{info.setup_count * 2} with {PARALLEL} in parallel, as many times (interleaved, "
        f"medians). Key exchange pinned to {KEX}, "
        f"host and user keys Ed25519. Took {info.elapsed:.0f} s. Produced by "
        f"`{info.command}`; docs/benchmarks.md says what each row means.\n"
    )
    if info.quick:
        out.append(
            "> A quick run moves 64 MiB per row, so fixed costs (channel open, the server "
            "spawning `cat`, OpenSSH's mux client) weigh more than in a 1 GiB run; the "
            "machine is shared with other work, so wall-clock numbers are indicative. The "
            "CPU columns are steadier.\n"
        )
    out.append("## Machine\n")
    out.append("| | |\n|---|---|")
    out.extend(f"| {k} | {v} |" for k, v in info.machine.items())
    out.append("")

    errors: list[str] = []
    names = " | ".join(SHORT[c] for c, _ in SUITES)
    out.append("## Bulk throughput, MB/s (median; range if repeated)\n")
    out.append(f"| client → server | disposal | {names} |")
    out.append("|---|---|" + "---:|" * len(SUITES))
    for client, server, view in BULK_PAIRS:
        cells = []
        for cipher, _ in SUITES:
            value = results.bulk.get((client, server, view, cipher))
            cells.append(_mbps_cell(value))
            if _failed(value) == "error":
                errors.append(f"- bulk {client} → {server} ({view}, {SHORT[cipher]}): {value}")
        disposal = "`cat >/dev/null`" if view == "cat" else "in-process sink"
        out.append(
            f"| {NAMES[client]} → {NAMES[server]} | {disposal} | " + " | ".join(cells) + " |"
        )
    floor = results.bulk.get((*FLOOR, GCM))
    if _failed(floor) == "error":
        errors.append(f"- floor: {floor}")
    dashes = " | ".join(["—"] * (len(SUITES) - 1))
    out.append(
        f"| floor: AES-GCM frames over trio TCP, no SSH | decrypt, drop | {_mbps_cell(floor)} "
        f"| {dashes} |"
    )
    out.append("")

    out.append("## Bulk CPU cost, CPU seconds per GB: client + server (median)\n")
    out.append(
        "Server includes what it spawned and reaped (`cat`; sshd's per-connection "
        "processes); the OpenSSH client includes its ControlMaster's handshake.\n"
    )
    out.append(f"| client → server | disposal | {names} |")
    out.append("|---|---|" + "---:|" * len(SUITES))
    for client, server, view in BULK_PAIRS:
        cells = [_cpu_cell(results.bulk.get((client, server, view, c))) for c, _ in SUITES]
        disposal = "`cat >/dev/null`" if view == "cat" else "in-process sink"
        out.append(
            f"| {NAMES[client]} → {NAMES[server]} | {disposal} | " + " | ".join(cells) + " |"
        )
    out.append(f"| floor (sender + receiver) | decrypt, drop | {_cpu_cell(floor)} | {dashes} |")
    out.append("")

    out.append("## Connection setup: handshake + publickey auth + `exec true`\n")
    out.append(
        f"| client → server | median latency, ms (sequential) | connections/s ({PARALLEL} in "
        "parallel) | CPU ms per connection: client + server |"
    )
    out.append("|---|---:|---:|---:|")
    for client, server in SETUP_PAIRS:
        rows = results.setup.get((client, server))
        row = results.setup_median(client, server)
        if isinstance(rows, list) and row is not None:
            rates = [r.cps for r in rows]
            spread = f" ({min(rates):.0f} to {max(rates):.0f})" if len(rates) > 1 else ""
            cells = [
                f"{row.median_ms:.1f}",
                f"{row.cps:.0f}{spread}",
                f"{row.client_cpu_ms:.1f} + {row.server_cpu_ms:.1f}",
            ]
        else:
            row = rows  # type: ignore[assignment]
            cells = [_failed(row) or "error"] * 3
            if _failed(row) == "error":
                errors.append(f"- setup {client} → {server}: {row}")
        out.append(f"| {NAMES[client]} → {NAMES[server]} | " + " | ".join(cells) + " |")
    out.append("")

    out.append("## Ratios next to the issue's targets (this run; nothing is asserted)\n")
    out.append(f"| ratio | {names} | target |")
    out.append("|---|" + "---:|" * len(SUITES) + "---|")
    for label, other, target in (
        ("trioport→trioport / asyncssh→asyncssh", ("asyncssh", "asyncssh"), "≥ 1.3x"),
        ("trioport→trioport / ssh→sshd", ("ssh", "sshd"), "≥ 1.0x"),
    ):
        cells = [
            _ratio(results.mbps("trioport", "trioport", "cat", c), results.mbps(*other, "cat", c))
            for c, _ in SUITES
        ]
        out.append(f"| {label} | " + " | ".join(cells) + f" | {target} |")
    floor_mbps = results.mbps(*FLOOR, GCM)
    for label, view, target in (
        ("trioport→trioport / floor", "cat", "≥ 0.80x"),
        ("trioport→trioport, sink / floor", "sink", "(second view)"),
    ):
        ratio = _ratio(results.mbps("trioport", "trioport", view, GCM), floor_mbps)
        out.append(f"| {label} | {ratio} | {dashes} | {target} |")
    tt = results.setup_median("trioport", "trioport")
    aa = results.setup_median("asyncssh", "asyncssh")
    cps = _ratio(tt.cps if tt else None, aa.cps if aa else None)
    blanks = " | ".join([""] * (len(SUITES) - 1))
    out.append(f"| setup cps: trioport→trioport / asyncssh→asyncssh | {cps} | {blanks} | ≥ 1.5x |")
    out.append("")
    if errors:
        out.append("## Errors\n")
        out.extend(errors)
        out.append("")
    return "\n".join(out) + "\n"
