"""``python -m bench`` (``bench/run``): measure every figure, print a table, write results.json.

Figures run in a fixed order, each module's ``measure(ctx) -> list[Figure]``; a module not
written yet is skipped with a note. A missed target is printed (✗) and recorded, and the exit
code stays 0; an error in a figure is printed with its traceback, the other figures still
run, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import ROOT, Context, Figure

FIGURES = ("ingest", "noop", "extraction", "memory", "scaleout", "hostile")
#: --quick: small sizes for a smoke test (about a minute).
QUICK = Context(
    work=Path(), messages=200, noop_sizes=(200, 1000), memory_sizes=(200, 500), workers_accounts=6
)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text}") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive: {text}")
    return sizes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, help="figure 1 mailbox size (default 2000)")
    parser.add_argument("--latency", type=float, default=0.3, help="model latency, s (0.3)")
    parser.add_argument(
        "--noop-sizes", type=_sizes, help="figure 2 mailbox sizes (default 1000,10000,50000)"
    )
    parser.add_argument(
        "--memory-sizes", type=_sizes, help="figure 4 mailbox sizes (default 1000,10000)"
    )
    parser.add_argument("--accounts", type=int, help="figure 5 accounts (default 30)")
    parser.add_argument(
        "--unique-pdfs",
        type=float,
        default=0.75,
        help="share of PDF mails whose PDF is byte-unique, figures 1 and 4 (0.75)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=FIGURES, metavar="FIGURE", help="|".join(FIGURES)
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, a smoke test (explicit sizes win)"
    )
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "results.json", help="results file"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    defaults = QUICK if args.quick else Context(work=Path())
    selected = [name for name in FIGURES if not args.only or name in args.only]
    # Children inherit our environment: no API key or invoicesync setting of the caller's
    # shell may change what is measured (the extraction figure passes its own key).
    for name in list(os.environ):
        if name.startswith(("INVOICESYNC_", "OPENAI_")):
            del os.environ[name]
    os.chdir(ROOT)
    work = Path(tempfile.mkdtemp(prefix="invoicesync-bench-"))
    ctx = Context(
        work=work,
        messages=args.messages or defaults.messages,
        latency=args.latency,
        noop_sizes=args.noop_sizes or defaults.noop_sizes,
        memory_sizes=args.memory_sizes or defaults.memory_sizes,
        workers_accounts=args.accounts or defaults.workers_accounts,
        unique_pdfs=args.unique_pdfs,
    )
    # The no-op and memory figures share one ladder of mailboxes: climb only what is asked.
    if "noop" not in selected:
        ctx.noop_sizes = ()
    if "memory" not in selected:
        ctx.memory_sizes = ()
    started = time.perf_counter()
    machine = _machine()
    print(f"bench: scratch {work}; {machine['cpu_count']} x {machine['cpu_model']}")
    figures: list[Figure] = []
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}
    try:
        for name in selected:
            try:
                module = importlib.import_module(f"bench.figures.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"bench.figures.{name}":
                    raise
                print(f"bench: {name}: bench/figures/{name}.py does not exist yet, skipped")
                continue
            print(f"bench: {name} ...", flush=True)
            begin = time.perf_counter()
            try:
                measured = module.measure(ctx)
            except Exception as exc:
                traceback.print_exc()
                errors[name] = f"{type(exc).__name__}: {exc}"
                measured = []
            timings[name] = time.perf_counter() - begin
            print(f"bench: {name} took {timings[name]:.0f} s", flush=True)
            figures += measured
    finally:
        if args.keep:
            print(f"bench: scratch directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started
    _print_table(figures)
    for name, error in errors.items():
        print(f"bench: {name} FAILED: {error}")
    results = {
        "machine": machine,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["bench/run", *(sys.argv[1:] if argv is None else argv)]),
        "elapsed_s": round(elapsed, 1),
        "figure_seconds": {name: round(t, 1) for name, t in timings.items()},
        "sizes": {
            "messages": ctx.messages,
            "latency_s": ctx.latency,
            "noop_sizes": list(ctx.noop_sizes),
            "memory_sizes": list(ctx.memory_sizes),
            "accounts": ctx.workers_accounts,
            "unique_pdfs": ctx.unique_pdfs,
        },
        "figures": {figure.name: _record(figure) for figure in figures},
        "errors": errors,
    }
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"bench: {len(figures)} figures in {elapsed:.0f} s, written to {args.output}")
    return 1 if errors else 0


def _record(figure: Figure) -> dict[str, Any]:
    return {
        "value": round(figure.value, 4),
        "unit": figure.unit,
        "baseline": None if figure.baseline is None else round(figure.baseline, 4),
        "baseline_name": figure.baseline_name,
        "ratio": None if figure.ratio is None else round(figure.ratio, 4),
        "target": figure.target,
        "target_on": figure.target_on,
        "holds": figure.holds,
        "note": figure.note,
        "extra": figure.extra,
    }


def _print_table(figures: list[Figure]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="invoicesync benchmark")
    for column in ("figure", "value", "baseline", "ratio", "target", "holds"):
        table.add_column(column, justify="left" if column in ("figure", "baseline") else "right")
    for figure in figures:
        baseline = "-"
        if figure.baseline is not None:
            baseline = f"{_number(figure.baseline)} {figure.unit} ({figure.baseline_name})"
        ratio = "-" if figure.ratio is None else f"{figure.ratio:.2f}x"
        target = "-"
        if figure.target is not None:
            target = f"<= {figure.target:g}" + ("x" if figure.target_on == "ratio" else "")
            target += "" if figure.target_on == "ratio" else f" {figure.unit}"
        holds = {True: "[green]✓[/]", False: "[red]✗[/]", None: "-"}[figure.holds]
        table.add_row(
            figure.name, f"{_number(figure.value)} {figure.unit}", baseline, ratio, target, holds
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _number(value: float) -> str:
    return (
        f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    )


def _machine() -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo")
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor() or "unknown",
    )
    meminfo = _read("/proc/meminfo").split()
    memory_kib = int(meminfo[meminfo.index("MemTotal:") + 1]) if "MemTotal:" in meminfo else 0
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kib / 2**20, 1),
        "load_average_at_start": list(os.getloadavg()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dovecot": _version(["/usr/sbin/dovecot", "--version"]),
        "mbsync": _version(["mbsync", "--version"]),
        "git": _version(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _version(command: list[str]) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return result.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
