"""Command line, measurement schedule and the printed report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import platform
import statistics
import sys
from dataclasses import dataclass, field
from importlib import metadata

from benchmarks.asgi import call, run_requests, time_requests
from benchmarks.variants import (
    ANCHOR,
    AXESS_WARM,
    STARLETTE,
    STARSESSIONS,
    VARIANTS,
    Bench,
    CallCounts,
    Unavailable,
)

#: The target (book: Internals): read-only request, memory store, µs over
#: bare Starlette, stated for a
#: machine where bare Starlette takes about 13 µs, Starlette's
#: SessionMiddleware +40 µs and starsessions +46 µs.
TARGET_OVERHEAD_US = 10.0
REFERENCE_BARE_US = 13.0
REFERENCE_ANCHORS_US = {"Starlette SessionMiddleware": 40.0, "starsessions (memory)": 46.0}
#: The multiplication sign, spelled out to keep ruff's ambiguous-character rule quiet.
X = "\u00d7"
#: Log messages expected in a benchmark run (dev keys, loopback Valkey).
_EXPECTED_LOGS = ("axess security weakened", "ValkeyStore: insecure Valkey connection")


class CheckFailed(Exception):
    """The variant does not do what the benchmark assumes (a bug to report)."""


@dataclass(slots=True)
class Row:
    name: str
    bench: Bench | None = None
    skipped: str | None = None
    error: str | None = None
    samples: list[float] = field(default_factory=list)  # µs per request, per repetition
    counts: CallCounts | None = None

    @property
    def best(self) -> float | None:
        return min(self.samples) if self.samples else None


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name}: {record.getMessage()}"
        self.messages[text] = self.messages.get(text, 0) + 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Per-request cost of a read-only session request, in-process.",
    )
    p.add_argument("--n", type=int, default=20_000, help="requests per repetition (default 20000)")
    p.add_argument("--repeat", type=int, default=5, help="repetitions; the best is reported")
    p.add_argument(
        "--store-calls",
        action="store_true",
        help="only count store calls / server commands per request (no timing)",
    )
    p.add_argument("--count-requests", type=int, default=200, help="requests per store-call count")
    p.add_argument("--no-servers", action="store_true", help="skip SQLite/PostgreSQL/Valkey")
    p.add_argument("--only", action="append", default=[], help="run variants containing TEXT")
    args = p.parse_args(argv)
    if args.n < 1 or args.repeat < 1 or args.count_requests < 1:
        p.error("--n, --repeat and --count-requests must be positive")
    return args


async def _check(row: Row) -> None:
    """One recorded request per client, outside the timed loop."""
    bench = row.bench
    assert bench is not None
    for scope in bench.scopes:
        response = await call(bench.app, scope)
        if response.status != 200:
            raise CheckFailed(f"status {response.status} on the read-only request")
        if response.body != bench.expect_body:
            raise CheckFailed(
                f"session not loaded: body {response.body!r}, expected {bench.expect_body!r}"
            )
        cookies = sorted(response.set_cookies())
        if cookies and bench.strict:
            raise CheckFailed(f"Set-Cookie ({', '.join(cookies)}) on a read-only request")
        if cookies and "Set-Cookie" not in " ".join(bench.notes):
            bench.notes.append("sends Set-Cookie on every read-only request")


def _selected(args: argparse.Namespace) -> list[str]:
    names = [name for name, _ in VARIANTS]
    if args.no_servers:
        names = names[:5]
    if args.only:
        keep = [n for n in names if any(t.lower() in n.lower() for t in args.only)]
        names = ([ANCHOR] if ANCHOR not in keep and not args.store_calls else []) + keep
    return names


async def _measure(args: argparse.Namespace) -> tuple[list[Row], bool]:
    factories = dict(VARIANTS)
    rows = [Row(name) for name in _selected(args)]
    failed = False
    async with contextlib.AsyncExitStack() as stack:
        for row in rows:
            try:
                row.bench = await stack.enter_async_context(factories[row.name]())
                await _check(row)
            except Unavailable as exc:
                row.bench, row.skipped = None, str(exc)
            except CheckFailed as exc:
                row.bench, row.error, failed = None, f"CHECK FAILED: {exc}", True
            except Exception as exc:
                row.bench, row.error = None, f"error: {type(exc).__name__}: {exc}"
                failed = failed or row.name.startswith("axess")
        live = [r for r in rows if r.bench is not None]

        if not args.store_calls:
            for row in live:  # warm-up: first-call paths, caches, connections
                bench = row.bench
                assert bench is not None
                await run_requests(bench.app, bench.scopes, max(args.n // 10 // bench.scale, 50))
            # Repetitions interleave the variants, so drift (CPU frequency,
            # neighbours on the machine) hits every row alike.
            for _ in range(args.repeat):
                for row in live:
                    bench = row.bench
                    assert bench is not None
                    n = max(args.n // bench.scale, 1)
                    seconds = await time_requests(bench.app, bench.scopes, n)
                    row.samples.append(seconds / n * 1e6)

        for row in live:
            bench = row.bench
            assert bench is not None
            if bench.count_calls is not None:
                row.counts = await bench.count_calls(args.count_requests)
                if bench.strict and (row.counts.loads != 1 or row.counts.writes != 0):
                    failed = True
    return rows, failed


def _fmt(x: float | None, spec: str = ".1f", prefix: str = "") -> str:
    return "—" if x is None else f"{prefix}{x:{spec}}"


def _notes(row: Row) -> str:
    if row.skipped:
        return f"skipped: {row.skipped}"
    if row.error:
        return row.error
    assert row.bench is not None
    notes = list(row.bench.notes)
    if row.bench.scale != 1:
        notes.append(f"N/{row.bench.scale}")
    return "; ".join(notes)


def _timing_table(rows: list[Row]) -> list[str]:
    anchor = next((r.best for r in rows if r.name == ANCHOR), None)
    out = [
        "| variant | µs/request | µs over bare | ratio to bare | notes |",
        "|---|---:|---:|---:|---|",
    ]
    for row in rows:
        best = row.best
        over = best - anchor if best is not None and anchor is not None else None
        ratio = best / anchor if best is not None and anchor else None
        out.append(
            f"| {row.name} | {_fmt(best)} | {_fmt(over, '+.1f')} | {_fmt(ratio, '.2f')}"
            f"{X if ratio is not None else ''} | {_notes(row)} |"
        )
    return out


def _details(rows: list[Row]) -> list[str]:
    return [f"- {r.name}: {d}" for r in rows if r.bench is not None for d in r.bench.details]


def _summary(rows: list[Row]) -> list[str]:
    anchor = next((r.best for r in rows if r.name == ANCHOR), None)
    if anchor is None:
        return []
    overhead = {r.name: r.best - anchor for r in rows if r.best is not None}
    axess = overhead.get(AXESS_WARM)
    if axess is None:
        return []
    # Machines differ, so the target is also read against this run's anchors:
    # scaled by bare Starlette, and as a fraction of each baseline's overhead.
    target = TARGET_OVERHEAD_US
    out = [
        f"axess memory (warm) overhead = {axess:.1f} µs; target ≤ {target:g} µs",
        f"- as stated: {axess:.1f} ≤ {target:g} µs: {_verdict(axess, target)}",
    ]
    scaled = TARGET_OVERHEAD_US * anchor / REFERENCE_BARE_US
    out.append(
        f"- scaled by bare Starlette ({anchor:.1f} µs here vs {REFERENCE_BARE_US:g}): "
        f"{axess:.1f} ≤ {scaled:.1f} µs, i.e. ratio {1 + axess / anchor:.2f}{X} ≤ "
        f"{1 + TARGET_OVERHEAD_US / REFERENCE_BARE_US:.2f}{X}: {_verdict(axess, scaled)}"
    )
    for name in (STARLETTE, STARSESSIONS):
        other = overhead.get(name)
        reference = REFERENCE_ANCHORS_US.get(name)
        if other is None or reference is None or axess <= 0:
            continue
        wanted = reference / TARGET_OVERHEAD_US
        out.append(
            f"- against {name} (+{other:.1f} µs here, +{reference:g} at the reference): "
            f"its overhead = {other / axess:.1f}{X} axess's, target ≥ {wanted:.1f}{X}: "
            f"{_verdict(axess, other / wanted)}"
        )
    out += _paired(rows)
    return out


def _paired(rows: list[Row]) -> list[str]:
    """axess's overhead as a fraction of each baseline's, within each
    repetition: the rows of one repetition are timed back to back, so drift
    between repetitions (which the best-of figures above mix) cancels out."""
    by_name = {r.name: r.samples for r in rows}
    bare, axess = by_name.get(ANCHOR), by_name.get(AXESS_WARM)
    if not bare or not axess:
        return []
    out = []
    for name in (STARLETTE, STARSESSIONS):
        other = by_name.get(name)
        if not other or len(other) != len(bare) or len(axess) != len(bare):
            continue
        shares = sorted(
            (a - b) / (o - b) for a, o, b in zip(axess, other, bare, strict=True) if o > b
        )
        if shares:
            out.append(
                f"- per repetition, axess's overhead / {name}'s: median "
                f"{statistics.median(shares):.2f} (range {shares[0]:.2f} to {shares[-1]:.2f}, "
                f"{len(shares)} repetitions)"
            )
    return out


def _verdict(value: float, limit: float) -> str:
    return "met" if value <= limit else "MISSED"


def _counts_table(rows: list[Row]) -> list[str]:
    out = [
        "| variant | store reads / request | store writes / request | commands per request "
        "| counted by | check |",
        "|---|---:|---:|---|---|---|",
    ]
    for row in rows:
        c = row.counts
        if c is None:
            if row.bench is None and row.name.startswith("axess"):
                out.append(f"| {row.name} | — | — | — | — | {_notes(row)} |")
            continue
        assert row.bench is not None
        check = "—"
        if row.bench.strict:
            check = "ok (1 read, 0 writes)" if (c.loads, c.writes) == (1, 0) else "UNEXPECTED"
        out.append(
            f"| {row.name} | {c.loads:.2f} | {c.writes:.2f} | {c.commands or '—'} "
            f"| {c.source or 'store wrapper'} | {check} |"
        )
    return out


def _header(args: argparse.Namespace) -> list[str]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "?"

    versions = ", ".join(
        f"{d} {version(d)}" for d in ("axess", "starlette", "starsessions", "itsdangerous")
    )
    what = (
        f"best of {args.repeat} {X} {args.n} requests (server variants: fewer, see notes)"
        if not args.store_calls
        else f"{args.count_requests} requests per count"
    )
    return [
        "## Read-only request with a session cookie, in-process ASGI",
        "",
        f"Python {platform.python_version()} on {platform.machine()}; {versions}; {what}.",
    ]


async def _amain(args: argparse.Namespace) -> int:
    collect = _Collect()
    axess_log = logging.getLogger("axess")
    axess_log.addHandler(collect)
    axess_log.propagate = False
    try:
        rows, failed = await _measure(args)
    finally:
        axess_log.removeHandler(collect)
        axess_log.propagate = True
    blocks = [_header(args)]
    if not args.store_calls:
        blocks += [_timing_table(rows), _details(rows), _summary(rows)]
        blocks.append(["### Store round trips per read-only request"])
    blocks.append(_counts_table(rows))
    unexpected = [
        (m, n) for m, n in collect.messages.items() if not any(e in m for e in _EXPECTED_LOGS)
    ]
    if unexpected:
        blocks.append(["Unexpected axess log messages during the run:"])
        blocks.append([f"- {m} ({X}{n})" for m, n in unexpected])
    lines = "\n\n".join("\n".join(block) for block in blocks if block)
    print(lines)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    return asyncio.run(_amain(args))
