"""Turning load-generator results into the figures, ratios and verdicts of a benchmark report
(Markdown: readable in a terminal and committed under ``benchmarks/results/``)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from benchmarks.loadgen import Result

__all__ = ["Measured", "Targets", "percentile", "render", "saturation_phase", "slowest_by_fifth",
           "slowest_due_ms"]

HOLDFAST = "holdfast"
RAW = "raw"
_CPU_GROUPS = ("server", "postgres", "redis", "client", "irq", "other")


@dataclass(frozen=True, slots=True)
class Measured:
    phase: str  # "saturation@<connections>" or "open:<rate>"
    target: str  # HOLDFAST or RAW
    round: int
    result: Result
    # pgstats.pg_delta over the run
    pg: dict[str, float] = field(default_factory=dict)
    # Holdfast only: server_stages.means over the run (seconds; "batch": authorisations per
    # ledger call)
    stages: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Targets:
    saturation_rps: float = 2_500.0
    saturation_ratio: float = 0.8
    # False when the raw stack writes the ledger's rows (--raw-writes ledger): the issues' ratio
    # targets are against the one-insert raw stack, so the ratio is then information only
    ratio_is_target: bool = True
    open_rate: float = 1_000.0
    open_p99_ms: float = 10.0


@dataclass(slots=True)
class Context:
    """What the report says about how it was measured."""

    title: str
    settings: list[tuple[str, str]] = field(default_factory=list)
    environment: list[tuple[str, str]] = field(default_factory=list)
    ledger: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def percentile(ordered: Sequence[int], p: float) -> float:
    """Nearest-rank percentile of sorted values (no interpolation: a value that was observed)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


@dataclass(frozen=True, slots=True)
class _Latency:
    p50: float
    p99: float
    p999: float
    max: float
    count: int

    @classmethod
    def of(cls, samples_us: Iterable[int]) -> _Latency:
        ordered = sorted(samples_us)
        ms = [percentile(ordered, p) / 1000 for p in (50, 99, 99.9, 100)]
        return cls(ms[0], ms[1], ms[2], ms[3], len(ordered))


def slowest_due_ms(result: Result) -> list[float]:
    """The due times (ms into the measured window) of an open-loop run's slowest 1 % of
    answers; empty without due times (``Spec.keep_due``) or with fewer than 100 answers."""
    n = len(result.latencies_us) // 100
    if n == 0 or len(result.due_ms) != len(result.latencies_us):
        return []
    slowest = sorted(range(len(result.latencies_us)), key=result.latencies_us.__getitem__)[-n:]
    return [result.due_ms[i] for i in slowest]


def slowest_by_fifth(result: Result) -> str:
    """Where in an open-loop run's measured window its slowest 1 % of answers were due: the
    percentage in each fifth, first to last ("40/15/15/15/15": the tail came early, as from
    something that settles; even shares: spread over the run). "-" without due times
    (``Spec.keep_due``)."""
    due = slowest_due_ms(result)
    if not due or result.duration_s <= 0:
        return "-"
    fifth_ms = result.duration_s * 1000 / 5
    counts = [0] * 5
    for d in due:
        counts[min(4, max(0, int(d // fifth_ms)))] += 1
    return "/".join(f"{100 * c / len(due):.0f}" for c in counts)


def _runs(measured: Sequence[Measured], phase: str, target: str) -> list[Result]:
    return [m.result for m in measured if m.phase == phase and m.target == target]


def _pooled(results: Sequence[Result]) -> _Latency:
    return _Latency.of(x for r in results for x in r.latencies_us)


def _median_rate(results: Sequence[Result]) -> float:
    return statistics.median(r.throughput for r in results) if results else math.nan


def _num(x: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(x) else f"{x:,.{digits}f}"


def _ratio(a: float, b: float) -> str:
    return "n/a" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> list[str]:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def saturation_phase(connections: int) -> str:
    return f"saturation@{connections}"


def _headline(measured: Sequence[Measured], phases: Sequence[str], targets: Targets
              ) -> list[str]:
    rows: list[list[str]] = []
    levels = [p for p in phases if p.startswith("saturation@")]
    # a server's saturation: its best concurrency level (the median of that level's rounds)
    per_level = {p: (_median_rate(_runs(measured, p, HOLDFAST)),
                     _median_rate(_runs(measured, p, RAW))) for p in levels}
    sat_h = max((h for h, _ in per_level.values()), default=math.nan)
    sat_r = max((r for _, r in per_level.values()), default=math.nan)
    sat_ok = sat_h >= targets.saturation_rps and (
        not targets.ratio_is_target or sat_h >= targets.saturation_ratio * sat_r)
    # a run answered with errors, or one that ran out of requests, measured something else
    spoiled = any(r.errors or r.exhausted or any(k != "200" for k in r.statuses)
                  for p in levels for r in _runs(measured, p, HOLDFAST) + _runs(measured, p, RAW))
    n_rounds = len(_runs(measured, levels[0], HOLDFAST)) if levels else 0
    rows.append([
        f"**saturation** (closed loop; req/s, each server's best of "
        f"{', '.join(p.split('@')[1] for p in levels)} connections, median of {n_rounds} "
        "rounds each)",
        _num(sat_h), _num(sat_r), _ratio(sat_h, sat_r),
        f">= {targets.saturation_rps:,.0f}/s and >= {targets.saturation_ratio} x raw"
        if targets.ratio_is_target else
        f">= {targets.saturation_rps:,.0f}/s (the ratio: information; the targets' raw stack "
        "writes one row)",
        "INVALID: errors (see Every run)" if spoiled else _verdict(sat_ok),
    ])
    for p in levels:
        hold, raw = _runs(measured, p, HOLDFAST), _runs(measured, p, RAW)
        rows.append([
            f"  {p.split('@')[1]} connections: median (each round, run back to back)",
            f"{_num(per_level[p][0])} ({', '.join(_num(r.throughput) for r in hold)})",
            f"{_num(per_level[p][1])} ({', '.join(_num(r.throughput) for r in raw)})",
            _ratio(*per_level[p]), "", ""])
    for phase in phases:
        if not phase.startswith("open:"):
            continue
        rate = float(phase.split(":", 1)[1])
        hold, raw = _runs(measured, phase, HOLDFAST), _runs(measured, phase, RAW)
        lh, lr = _pooled(hold), _pooled(raw)
        got_h = statistics.mean(r.throughput for r in hold) if hold else math.nan
        got_r = statistics.mean(r.throughput for r in raw) if raw else math.nan
        is_target = rate == targets.open_rate
        rows.append([f"**open loop {rate:,.0f}/s**: achieved req/s ({lh.count:,} measured)",
                     _num(got_h), _num(got_r), _ratio(got_h, got_r), "", ""])
        for label, a, b in (("p50", lh.p50, lr.p50), ("p99", lh.p99, lr.p99),
                            ("p99.9", lh.p999, lr.p999), ("max", lh.max, lr.max)):
            goal, verdict = "", ""
            if label == "p99":
                goal = f"<= {targets.open_p99_ms:g} ms" + ("" if is_target else " (info)")
                verdict = _verdict(a <= targets.open_p99_ms) if is_target else (
                    "ok" if a <= targets.open_p99_ms else "over")
            rows.append([f"  {label} latency from due time (ms)", _num(a, 2), _num(b, 2),
                         _ratio(a, b), goal, verdict])
    return _table(["measurement", "Holdfast", "raw stack", "Holdfast / raw", "target", ""],
                  rows, "lrrrll")


def _rounds(measured: Sequence[Measured]) -> list[str]:
    rows = []
    for m in measured:
        r = m.result
        lat = _Latency.of(r.latencies_us)
        svc = _Latency.of(r.service_us)
        lag = _Latency.of(r.lag_us) if r.lag_us else None
        non_200 = sum(v for k, v in r.statuses.items() if k != "200")
        flags = []
        if r.exhausted:
            flags.append("ran out of pre-built requests")
        if r.errors or non_200:
            flags.append(f"{r.errors} errors, {non_200} non-200")
        flags.extend(_checkpoint(m.pg))
        rows.append([
            m.phase, m.target, str(m.round), _num(r.throughput), _num(lat.p50, 2),
            _num(lat.p99, 2), _num(lat.p999, 2), _num(svc.p99, 2),
            "-" if lag is None else _num(lag.p99, 2), str(r.max_backlog),
            _num(m.pg.get("wal_bytes_per_commit", math.nan) / 1024, 1),
            _num(m.stages["batch"], 1) if "batch" in m.stages else "-",
            _num(m.pg.get("other_commits_per_s", math.nan)), slowest_by_fifth(r),
            "; ".join(flags) or "-",
        ])
    return _table(["phase", "server", "round", "req/s", "p50 ms", "p99 ms", "p99.9 ms",
                   "service p99 ms", "send lag p99 ms", "max queue", "WAL KiB/commit",
                   "authorisations per ledger call", "other DBs' commits/s",
                   "slowest 1 % by fifth of the run, %", "problems"],
                  rows, "lllrrrrrrrrrrll")


def _checkpoint(pg: Mapping[str, float]) -> list[str]:
    """A checkpoint's work during a run, for its problems column."""
    flags = []
    if pg.get("checkpoint_buffers", 0) > 0:
        flags.append(f"a checkpoint wrote {pg['checkpoint_buffers']:,.0f} buffers")
    if pg.get("checkpoint_sync_ms", 0) > 0:
        flags.append(f"a checkpoint's fsyncs took {pg['checkpoint_sync_ms']:,.0f} ms")
    return flags


def _stages(measured: Sequence[Measured]) -> list[str]:
    rows = []
    for m in measured:
        s = m.stages
        if "decision" not in s:
            continue
        ms = [s.get(k, math.nan) * 1000 for k in ("decision", "redis", "ledger_wait",
                                                   "ledger_call")]
        rest = ms[0] - ms[1] - ms[2]
        rows.append([m.phase, str(m.round), *(_num(x, 2) for x in ms),
                     _num(ms[2] - ms[3], 2), _num(rest, 2)])
    return _table(["phase", "round", "request in to answer out", "Redis decision",
                   "ledger: handed over to answer back", "ledger call",
                   "ledger: slot and event-loop waits", "the rest"], rows, "llrrrrrr")


def _cpu(measured: Sequence[Measured], phases: Sequence[str]) -> list[str]:
    rows = []
    for phase in phases:
        for target in (HOLDFAST, RAW):
            results = [r for r in _runs(measured, phase, target) if r.cpu_s and r.completed]
            if not results:
                continue
            done = sum(r.completed for r in results)
            per = {g: sum(r.cpu_s.get(g, 0.0) for r in results) / done * 1e6
                   for g in (*_CPU_GROUPS, "machine")}
            capacity = sum(r.cpu_s.get("capacity", math.nan) for r in results)
            busy = sum(r.cpu_s.get("machine", 0.0) for r in results) / capacity
            steal = sum(r.cpu_s.get("steal", 0.0) for r in results) / capacity
            seconds = sum(r.duration_s for r in results)
            server_cores = sum(r.cpu_s.get("server", 0.0) for r in results) / seconds
            rows.append([phase, target, *(_num(per[g]) for g in (*_CPU_GROUPS, "machine")),
                         _num(server_cores, 2), f"{busy:.0%}", f"{steal:.0%}"])
    return _table(["phase", "server", "server", "postgres", "redis", "client", "kernel irq",
                   "other", "all", "server process, cores", "machine busy", "steal"],
                  rows, "llrrrrrrrrrr")


def _reasons(measured: Sequence[Measured]) -> list[str]:
    totals: dict[str, int] = {}
    for m in measured:
        if m.target == HOLDFAST:
            for reason, n in m.result.reasons.items():
                totals[reason] = totals.get(reason, 0) + n
    total = sum(totals.values()) or 1
    rows = [[reason, f"{n:,}", f"{n / total:.1%}"]
            for reason, n in sorted(totals.items(), key=lambda kv: -kv[1])]
    return _table(["reason", "answers", "share"], rows, "lrr")


def _sharing_note(measured: Sequence[Measured]) -> str | None:
    """A warning when other work used a noticeable share of the machine while we measured."""
    other = sum(m.result.cpu_s.get("other", 0.0) for m in measured)
    capacity = sum(m.result.cpu_s.get("capacity", 0.0) for m in measured)
    commits = [m.pg["other_commits_per_s"] for m in measured if "other_commits_per_s" in m.pg]
    if capacity <= 0 or other / capacity < 0.05:
        return None
    busiest = max(m.result.cpu_s.get("other", 0.0) / m.result.cpu_s["capacity"]
                  for m in measured if m.result.cpu_s.get("capacity"))
    note = (f"The machine was shared: other processes used {other / capacity:.0%} of all cores "
            f"while we measured (up to {busiest:.0%} during one run)")
    if commits:
        note += (f", and other databases committed {statistics.median(commits):,.0f}/s "
                 "(median) on the same PostgreSQL, sharing its WAL and fsyncs")
    return note + ". Figures are pessimistic; compare the ratios, and each run's columns."


def render(measured: Sequence[Measured], phases: Sequence[str], targets: Targets,
           context: Context) -> str:
    sharing = _sharing_note(measured)
    if sharing:
        context.notes.insert(0, sharing)
    lines = [f"# {context.title}", ""]
    lines += _headline(measured, phases, targets)
    lines += ["", "Latency is from each request's *due* time in the open-loop schedule (queueing "
              "in the client counts); the ratio column is Holdfast / raw stack (for throughput "
              "higher is better, for latency lower is better).", ""]
    for note in context.notes:
        lines += [f"**Note:** {note}", ""]
    lines += ["## Every run", "", *_rounds(measured)]
    lines += ["", "## Where the CPU went", "",
              "CPU microseconds per answered request in the measured windows, by process "
              "group (PostgreSQL: the benchmark database's backends and the background "
              "processes; Redis is shared with anything else using it); machine busy and steal "
              "are shares of all cores.", ""]
    lines += _cpu(measured, phases)
    stage_rows = _stages(measured)
    if len(stage_rows) > 2:
        lines += ["", "## Where a Holdfast request's time went (server side)", "",
                  "Means in ms over each run, from Holdfast's own histograms "
                  "(`benchmarks/server_stages.py`): request in to answer out holds the Redis "
                  "decision and the time from handing the request to the ledger batcher to its "
                  "answer being back, which holds the ledger call it went out in (shared with "
                  "the other authorisations of that call) and the waits for a free slot and for "
                  "the event loop's turns (the call's mean is per call, the others per "
                  "request: where batches vary, larger calls weigh more per request, and the "
                  "waits column is an upper bound); the rest is reading the body, its signature, "
                  "parsing it and the decision's own steps. Outside it: aiohttp's parsing of "
                  "the request before the handler, and the answer's encoding and write.",
                  "", *stage_rows]
    lines += ["", "## Holdfast decisions (measured windows)", "", *_reasons(measured)]
    if context.ledger:
        lines += ["", "## Ledger after the run", ""] + [f"- {x}" for x in context.ledger]
    lines += ["", "## Settings", ""] + [f"- {k}: {v}" for k, v in context.settings]
    lines += ["", "## Machine", ""] + [f"- {k}: {v}" for k, v in context.environment]
    return "\n".join(lines) + "\n"
