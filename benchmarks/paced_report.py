"""The paced scenario's results: capacities, targets, the tables and the capacity chart.

`summary` turns the sweeps into the `paced` section of `latest.json`; `targets` are its rows of
the targets table:

- **paced capacity vs reference**: Switchboard's capacity (through the edge) over the reference's,
  at least `CAPACITY_VS_REFERENCE`. Capacities are Ns of the sweep, so the ratio is too. When the
  reference has no capacity in the sweep (its p99 lag is past 250 ms already at the smallest N),
  the ratio is only bounded from below, by Switchboard's capacity over the smallest N: PASS when
  that bound reaches the target, INFO when it does not (a smaller N would tell);
- **p99 lag at the reference's capacity N**: Switchboard's p99 lag no larger than the reference's,
  at the largest N the reference holds (INFO at the smallest N when the reference holds none);
- **0 errors up to Switchboard's capacity**: no error in any of its cells up to its capacity.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from benchmarks.paced import PacedPlan, Sweep, capacity
from benchmarks.systems import GRPC_DIRECT, LABELS, REFERENCE, SWITCHBOARD

CAPACITY_VS_REFERENCE: Final = 1.5
CLIENT_BUSY_SHARE: Final = 0.9
"""A cell whose load generator used this share of one core or more may have been limited by it, not
by the system: the report says so."""
CAPACITY_TARGET: Final = "paced capacity vs reference"
LAG_TARGET: Final = "p99 lag at the reference's paced capacity N"
ERRORS_TARGET: Final = "0 errors up to Switchboard's paced capacity"
COLORS: Final = {SWITCHBOARD: "#1f77b4", GRPC_DIRECT: "#2ca02c", REFERENCE: "#d62728"}


def summary(sweeps: Sequence[Sweep], plan: PacedPlan) -> dict[str, Any]:
    """The `paced` section of the results: the plan, every cell, and per system its capacity, why
    its sweep stopped early (None: it ran every N) and the Ns it skipped."""
    return {
        "plan": asdict(plan),
        "records": [record for sweep in sweeps for record in sweep.records],
        "systems": {
            sweep.system: {
                "label": LABELS[sweep.system],
                "capacity": capacity(sweep.records, plan.capacity_p99_lag_ms),
                "stopped": sweep.stopped,
                "skipped": list(sweep.skipped(plan)),
            }
            for sweep in sweeps
        },
    }


def _cell(paced: Mapping[str, Any], system: str, n: int) -> dict[str, Any] | None:
    return next((r for r in paced["records"] if r["system"] == system and r["n"] == n), None)


def _target(name: str, status: str, value: str, requirement: str) -> dict[str, Any]:
    return {"target": name, "status": status, "value": value, "requirement": requirement}


def _capacity_text(paced: Mapping[str, Any], system: str) -> str:
    """ "N=250", or "below N=100" when the system holds no N of the sweep."""
    found = paced["systems"][system]["capacity"]
    return f"N={found}" if found is not None else f"below N={min(paced['plan']['ns'])}"


def capacity_target(paced: Mapping[str, Any]) -> dict[str, Any]:
    requirement = f">= {CAPACITY_VS_REFERENCE}x"
    systems = paced["systems"]
    if SWITCHBOARD not in systems or REFERENCE not in systems:
        return _target(CAPACITY_TARGET, "n/a", "-", requirement)
    ours, theirs = systems[SWITCHBOARD]["capacity"], systems[REFERENCE]["capacity"]
    smallest = min(paced["plan"]["ns"])
    if ours is not None and theirs is not None:
        ratio = ours / theirs
        status = "PASS" if ratio >= CAPACITY_VS_REFERENCE else "MISS"
        return _target(CAPACITY_TARGET, status, f"{ratio:.2f}x (N={ours} vs N={theirs})", requirement)
    if ours is None:
        status = "MISS" if theirs is not None else "INFO"
        value = f"Switchboard below N={smallest}, reference {_capacity_text(paced, REFERENCE)}"
        if theirs is None:
            value += ": neither holds the smallest N; a smaller N would tell"
        return _target(CAPACITY_TARGET, status, value, requirement)
    bound = ours / smallest
    value = f"> {bound:.1f}x (Switchboard N={ours}; the reference is below the smallest N swept, {smallest})"
    if bound >= CAPACITY_VS_REFERENCE:
        return _target(CAPACITY_TARGET, "PASS", value, requirement)
    return _target(CAPACITY_TARGET, "INFO", value + "; a smaller N would tell", requirement)


def lag_target(paced: Mapping[str, Any]) -> dict[str, Any]:
    requirement = "Switchboard <= reference"
    systems = paced["systems"]
    if SWITCHBOARD not in systems or REFERENCE not in systems:
        return _target(LAG_TARGET, "n/a", "-", requirement)
    theirs = systems[REFERENCE]["capacity"]
    n = theirs if theirs is not None else min(paced["plan"]["ns"])
    ours_cell, ref_cell = _cell(paced, SWITCHBOARD, n), _cell(paced, REFERENCE, n)
    if ref_cell is None:
        return _target(LAG_TARGET, "n/a", "-", requirement)
    if ours_cell is None:
        stopped = systems[SWITCHBOARD]["stopped"]
        return _target(LAG_TARGET, "MISS", f"Switchboard stopped before N={n} ({stopped})", requirement)
    ours_lag, ref_lag = ours_cell["lag_p99_ms"], ref_cell["lag_p99_ms"]
    if ours_lag is None or ref_lag is None:
        return _target(LAG_TARGET, "MISS" if ours_lag is None else "n/a", "no tokens delivered", requirement)
    value = f"{ours_lag:.1f} vs {ref_lag:.1f} ms at N={n}"
    if theirs is None:
        value += f" (the reference holds no N of the sweep: compared at the smallest, {n})"
        return _target(LAG_TARGET, "INFO", value, requirement)
    return _target(LAG_TARGET, "PASS" if ours_lag <= ref_lag else "MISS", value, requirement)


def errors_target(paced: Mapping[str, Any]) -> dict[str, Any]:
    requirement = "0 errors"
    if SWITCHBOARD not in paced["systems"]:
        return _target(ERRORS_TARGET, "n/a", "-", requirement)
    ours = paced["systems"][SWITCHBOARD]["capacity"]
    cells = [r for r in paced["records"] if r["system"] == SWITCHBOARD]
    if ours is None:
        errors = sum(r["errors"] for r in cells)
        value = f"no capacity in the sweep; {errors} errors in {sum(r['conversations'] for r in cells)}"
        return _target(ERRORS_TARGET, "INFO", value + " conversations", requirement)
    held = [r for r in cells if r["n"] <= ours]
    errors = sum(r["errors"] for r in held)
    value = f"{errors} errors in {sum(r['conversations'] for r in held)} conversations (N <= {ours})"
    return _target(ERRORS_TARGET, "PASS" if errors == 0 else "MISS", value, requirement)


def targets(paced: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The paced scenario's rows of the targets table."""
    return [capacity_target(paced), lag_target(paced), errors_target(paced)]


# --------------------------------------------------------------------------- tables


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def heading(paced: Mapping[str, Any]) -> str:
    plan = paced["plan"]
    answer_s = (plan["reply_tokens"] - 1) / plan["tokens_per_s"]
    return (
        f"N conversations of one threads.create each, all started at once; every answer "
        f"{plan['reply_tokens']} tokens at {plan['tokens_per_s']:g} tokens/s ({answer_s:.1f} s on time). "
        "Lag per token: its arrival minus (offset + k / rate), the offset the stream's smallest "
        "arrival - k / rate (its most punctual token); "
        "TTFT: from just before the request to the first text delta. Capacity: the largest N with p99 "
        f"lag < {plan['capacity_p99_lag_ms']:.0f} ms and 0 errors; a system stops sweeping after a cell "
        f"with errors, a p99 lag > {plan['stop_p99_lag_ms'] / 1000:g} s or a p99 TTFT > "
        f"{plan['stop_ttft_answers'] * answer_s:.1f} s. In flight: the most streams between their first "
        "and last delta at once"
    )


def notes(paced: Mapping[str, Any]) -> list[str]:
    """The capacities, the sweeps that stopped early, and the cells whose load generator was busy."""
    lines = [
        "Capacity: "
        + ", ".join(f"{system} {_capacity_text(paced, system)}" for system in paced["systems"])
        + "."
    ]
    for system, about in paced["systems"].items():
        if about["stopped"] is not None:
            skipped = ", ".join(map(str, about["skipped"]))
            lines.append(
                f"{system} stopped sweeping, clearly past capacity ({about['stopped']})"
                + (f": N={skipped} not run." if skipped else ".")
            )
    busy = [
        f"{r['system']} N={r['n']} ({100 * r['client_cpu_share']:.0f} %)"
        for r in paced["records"]
        if (r["client_cpu_share"] or 0) >= CLIENT_BUSY_SHARE
    ]
    if busy:
        lines.append(
            f"The load generator used {100 * CLIENT_BUSY_SHARE:.0f} % of a core or more in "
            + ", ".join(busy)
            + ": there it may have been the limit, not the system."
        )
    return lines


def _rows(paced: Mapping[str, Any]) -> list[dict[str, Any]]:
    order = list(paced["systems"])
    return sorted(paced["records"], key=lambda r: (r["n"], order.index(r["system"])))


def table_lines(paced: Mapping[str, Any]) -> list[str]:
    """The paced section of the stdout report."""
    head = (
        f"{'system':<12} {'N':>5} {'lag p50':>8} {'lag p99':>8} {'lag max':>8} {'TTFT p50':>9} "
        f"{'TTFT p99':>9} {'flight':>6} {'CPU µs/tok':>10} {'client':>6} {'busy':>5} {'events':>6} "
        f"{'deltas':>6} {'err':>4} {'wall s':>6}  peak RSS MiB / growth KiB per stream"
    )
    lines = [*textwrap.wrap("Paced streaming: " + heading(paced) + ". Times in ms.", width=len(head))]
    lines += [head, "-" * len(head)]
    for r in _rows(paced):
        rss = " ".join(
            f"{name} {r['peak_rss_mib'][name]:.0f}/{r['rss_growth_per_stream_kib'][name]:.1f}"
            for name in r["peak_rss_mib"]
        )
        lines.append(
            f"{r['system']:<12} {r['n']:>5} {_number(r['lag_p50_ms']):>8} {_number(r['lag_p99_ms']):>8} "
            f"{_number(r['lag_max_ms']):>8} {_number(r['ttft_p50_ms']):>9} {_number(r['ttft_p99_ms']):>9} "
            f"{r['streaming_peak']:>6} {_number(r['cpu_us_per_token']):>10} "
            f"{_number(r['client_cpu_us_per_token']):>6} "
            f"{_number(100 * (r['client_cpu_share'] or 0)):>4}% {_number(r['events_per_turn'], 1):>6} "
            f"{_number(r['deltas_per_turn'], 1):>6} {r['errors']:>4} {r['wall_s']:>6.1f}  {rss}"
        )
    for note in notes(paced):
        lines += textwrap.wrap(note, width=len(head))
    return lines


def markdown_lines(paced: Mapping[str, Any]) -> list[str]:
    """The paced section of `latest.md` (and of docs/performance.md's results block)."""
    lines = [
        "### Paced streaming",
        "",
        heading(paced) + ":",
        "",
        "| system | N | lag p50 ms | lag p99 ms | lag max ms | TTFT p50 ms | TTFT p99 ms | in flight "
        "| server CPU µs/token | client CPU µs/token | client busy | events/turn | deltas/turn | errors "
        "| peak RSS MiB | RSS growth KiB/stream | wall s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|--:|",
    ]
    for r in _rows(paced):
        rss = ", ".join(f"{name} {mib:.0f}" for name, mib in r["peak_rss_mib"].items())
        growth = ", ".join(f"{name} {kib:.0f}" for name, kib in r["rss_growth_per_stream_kib"].items())
        lines.append(
            f"| {r['system']} | {r['n']} | {_number(r['lag_p50_ms'], 1)} | {_number(r['lag_p99_ms'], 1)} "
            f"| {_number(r['lag_max_ms'], 1)} | {_number(r['ttft_p50_ms'], 1)} "
            f"| {_number(r['ttft_p99_ms'], 1)} | {r['streaming_peak']} "
            f"| {_number(r['cpu_us_per_token'])} | {_number(r['client_cpu_us_per_token'])} "
            f"| {_number(100 * (r['client_cpu_share'] or 0))} % | {_number(r['events_per_turn'], 1)} "
            f"| {_number(r['deltas_per_turn'], 1)} | {r['errors']} | {rss} | {growth} | {r['wall_s']:.1f} |"
        )
    return [*lines, "", *(f"- {note}" for note in notes(paced))]


# --------------------------------------------------------------------------- chart


def write_chart(results: Mapping[str, Any], path: Path) -> None:
    """The capacity chart: p99 delivery lag versus N per system, with the capacity line (left), and
    server CPU per delivered token versus N (right); a cross marks the cell that ended a sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paced = results["paced"]
    plan = paced["plan"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5.4))
    for system, about in paced["systems"].items():
        cells = sorted((r for r in paced["records"] if r["system"] == system), key=lambda r: r["n"])
        if not cells:
            continue
        x = [r["n"] for r in cells]
        label = f"{LABELS[system]} (capacity {_capacity_text(paced, system)})"
        color = COLORS.get(system, "#7f7f7f")
        # A log axis needs positive values: a p99 lag at or under 1 ms is drawn at 1 ms.
        lag = [max(r["lag_p99_ms"] or 1.0, 1.0) for r in cells]
        left.plot(x, lag, "-", marker="o", color=color, label=label)
        right.plot(x, [r["cpu_us_per_token"] or 0 for r in cells], "-", marker="o", color=color, label=label)
        if about["stopped"] is not None:
            left.plot(x[-1:], lag[-1:], "x", markersize=12, color=color)
    left.axhline(plan["capacity_p99_lag_ms"], color="black", linestyle=":", linewidth=1)
    left.annotate(
        f"{plan['capacity_p99_lag_ms']:.0f} ms",
        xy=(0, plan["capacity_p99_lag_ms"]),
        xycoords=("axes fraction", "data"),
        xytext=(4, 4),
        textcoords="offset points",
        fontsize=8,
    )
    ticks = sorted({r["n"] for r in paced["records"]})
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_xlabel("concurrent paced streams (N)")
        axis.grid(True, which="both", alpha=0.3)
        if ticks:
            axis.set_xticks(ticks)
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        # Only the Ns of the sweep are labelled, not the log axis' minor ticks between them.
        axis.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_yscale("log")
    left.set_ylabel("p99 delivery lag per token, ms (log)")
    left.set_title("Delivery lag (x: past capacity, sweep stopped)")
    right.set_ylabel("server CPU per delivered token, µs")
    right.set_title("CPU per token")
    handles, labels = left.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.suptitle(
        f"Paced streaming — {plan['reply_tokens']} tokens at {plan['tokens_per_s']:g} tokens/s per "
        f"answer, all N streams at once, {results['machine']['cpus']} CPUs"
    )
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
