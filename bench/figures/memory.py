"""Figure 4: peak RSS of a first ingest, with 20 MB attachments in the mailbox; and the ladder.

Each size in ``ctx.memory_sizes`` gets a fresh mailbox of the usual mix (``MEMORY_MIX``:
PDFs, e-invoice XML, links, some 2 MB attachments) plus ``HUGE`` attachments of 20 MB
(every third a valid 20 MB PDF, the others archives and videos; under the default
``[storage] max_document_mb = 25``), and one first ``invoicesync run`` into a fresh SQLite
database. The peak RSS comes from ``wait4`` of that process. Target: at most 250 MB at every
size, and flat (the largest within 1.1x of the smallest).

The **ladder** serves this figure and the no-op figure (``noop.py``) in one pass over one
Dovecot, so that no mailbox is synced twice: sizes ascending, a memory size gets a fresh
mailbox and a first ingest; a no-op-only size grows the previous mailbox with small plain
mails (``GROWTH_MIX``) and catches up. A no-op size gets its no-op runs (after one warm-up)
just before its mailbox grows, or at the end, round-robin with the other sizes still there.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.common import (
    Context,
    Figure,
    invoicesync_command,
    label,
    last_run_counts,
    timed,
    timed_tree,
)
from bench.mailbox import BenchServer, Mailbox, Mix, write_config

HUGE = 5
MEMORY_MIX = Mix(big=0.01, huge=HUGE)
#: Messages added to reach a no-op size beyond the memory sizes: plain, a few PDFs resent.
GROWTH_MIX = Mix(pdf=0.02, pdf_unique=0.0, xml=0.0, link=0.0, big=0.0)
NOOP_REPEATS = 5


@dataclass
class Rung:
    """One mailbox size of the ladder: how its sync went and its no-op runs."""

    size: int
    fresh: bool  # a first ingest of a new mailbox (else: grown and caught up)
    sync_s: float
    sync_rss_kib: int
    summary: dict[str, Any]
    mailbox: dict[str, Any]
    noop_s: list[float] = field(default_factory=list)
    noop_rss_kib: list[int] = field(default_factory=list)
    noop_summary: dict[str, Any] = field(default_factory=dict)
    search_s: list[float] = field(default_factory=list)  # the minimal no-op (noop.py)
    #: Peak RSS of the sync's whole process tree (the run, fork server, workers), KiB.
    sync_tree_kib: int = 0


def ladder(ctx: Context) -> dict[int, Rung]:
    """Every size's sync (and no-op runs), computed once per context."""
    if "ladder" not in ctx.shared:
        ctx.shared["ladder"] = _climb(ctx)
    rungs: dict[int, Rung] = ctx.shared["ladder"]
    return rungs


@dataclass
class _Step:
    """A rung with what its no-op runs need: the mailbox and the command over its database."""

    rung: Rung
    box: Mailbox
    command: list[str]
    work: Path


def _climb(ctx: Context) -> dict[int, Rung]:
    memory, noop = set(ctx.memory_sizes), set(ctx.noop_sizes)
    rungs: dict[int, Rung] = {}
    last: list[_Step] = []  # per mailbox, its latest rung: those still exist at the end
    with BenchServer() as server:
        for size in sorted(memory | noop):
            if not last or size in memory:
                mix = replace(MEMORY_MIX, pdf_unique=ctx.unique_pdfs)
                box = server.mailbox(size, mix if size in memory else GROWTH_MIX)
                work = ctx.work / f"ladder-{label(size)}"
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir(parents=True)
                config = write_config(work / "c.toml", work=work, accounts=box.account_toml())
                step = _Step(Rung(size, True, 0, 0, {}, {}), box, [], work)
                step.command = invoicesync_command(ctx, config, "run")
            else:
                previous = last.pop()
                if previous.rung.size in noop:  # its state ends here: measure it now
                    _noops(ctx, [previous])
                server.grow(previous.box, size, GROWTH_MIX)
                step = replace(previous, rung=Rung(size, False, 0, 0, {}, {}))
            box = step.box
            print(f"  {label(size)}: {box.bytes / 2**20:.0f} MiB, {box.kinds}", flush=True)
            wall, rss, tree = timed_tree(step.command, cwd=step.work)
            [summary] = last_run_counts(step.work / "invoicesync.db")["accounts"]
            step.rung.sync_s, step.rung.sync_rss_kib, step.rung.summary = wall, rss, summary
            step.rung.sync_tree_kib = tree
            step.rung.mailbox = {"mib": round(box.bytes / 2**20, 1), **box.kinds}
            rungs[size] = step.rung
            last.append(step)
            print(f"  {label(size)}: sync {wall:.1f} s, peak RSS {rss / 1024:.0f} MB", flush=True)
        # Round-robin over the mailboxes that still exist, so that a change in the machine's
        # background load hits every size alike instead of skewing their ratio.
        _noops(ctx, [step for step in last if step.rung.size in noop])
    return rungs


def _noops(ctx: Context, steps: list[_Step]) -> None:
    from bench.figures.noop import minimal_noop

    for step in steps:  # a warm-up each: the first run after a sync meets a cold cache
        timed(step.command, cwd=step.work)
    for _ in range(NOOP_REPEATS):
        for step in steps:
            wall, rss = timed(step.command, cwd=step.work)
            step.rung.noop_s.append(wall)
            step.rung.noop_rss_kib.append(rss)
            step.rung.search_s.append(minimal_noop(ctx, step.box))
    for step in steps:
        [step.rung.noop_summary] = last_run_counts(step.work / "invoicesync.db")["accounts"]


def measure(ctx: Context) -> list[Figure]:
    rungs = ladder(ctx)
    sizes = sorted(ctx.memory_sizes)
    figures = []
    for size in sizes:
        rung = rungs[size]
        figures.append(
            Figure(
                f"peak_rss_first_ingest_{label(size)}_mb",
                rung.sync_rss_kib / 1024,
                "MB",
                target=250,
                target_on="value",
                note=f"{HUGE} x 20 MB attachments; first ingest took {rung.sync_s:.0f} s",
                extra={
                    "wall_s": round(rung.sync_s, 2),
                    "mailbox": rung.mailbox,
                    "summary": {k: rung.summary.get(k) for k in _SUMMARY},
                    "transfer": rung.summary.get("transfer", {}),
                },
            )
        )
        if rung.fresh:
            figures.append(
                Figure(
                    f"peak_rss_all_processes_first_ingest_{label(size)}_mb",
                    rung.sync_tree_kib / 1024,
                    "MB",
                    target=400,
                    target_on="value",
                    note="the run with its fork server and parsing workers (sampled every 50 ms)",
                )
            )
    if len(sizes) > 1:
        low, high = rungs[sizes[0]], rungs[sizes[-1]]
        figures.append(
            Figure(
                f"peak_rss_{label(high.size)}_vs_{label(low.size)}",
                high.sync_rss_kib / 1024,
                "MB",
                baseline=low.sync_rss_kib / 1024,
                baseline_name=f"peak RSS at {label(low.size)}",
                target=1.1,
                note="flat: streaming, never a whole mailbox or batch of bodies",
            )
        )
    return figures


_SUMMARY = ("status", "seen", "new_messages", "documents", "invoices", "duplicates", "failed")
