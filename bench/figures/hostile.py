"""Figure 6: one hostile PDF among the usual mail costs its own time limit, never the run.

A Maildir of the sample mailbox copied ``_COPIES`` times (byte-distinct mails, the same
PDFs) is run with a fresh SQLite database, once as it is (the baseline) and once with one
more mail whose PDF hangs any walker of its page (form XObject fan-out,
``tests.hostile.fanout_pdf``), each ``_REPEATS`` times. The hostile run's document is
killed at ``timeouts.extract_document`` (``_LIMIT`` here), so the figure is the hostile
run's median wall time minus that limit, against the clean run's: target ≤ 1.1x.

The run's own peak RSS comes from ``wait4``; all its processes together (the fork server
and the parsing workers included) are sampled every 50 ms (``bench.common.tree_rss``):
``run_parent_peak_rss_mb`` (target ≤ 250) and ``run_all_processes_peak_rss_mb`` (≤ 400).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bench.common import Context, Figure, invoicesync_command, median, timed_tree

_COPIES = 4
_REPEATS = 3
_LIMIT = 10.0


def measure(ctx: Context) -> list[Figure]:
    from tests.helpers import big_maildir
    from tests.hostile import fanout_pdf
    from tests.integration.test_isolation import _mail_with_pdf

    base = Path(tempfile.mkdtemp(prefix="hostile-", dir=ctx.work))
    clean = big_maildir(base / "clean", copies=_COPIES)
    hostile = base / "hostile"
    shutil.copytree(clean, hostile)
    _mail_with_pdf(hostile, "fanout", fanout_pdf())
    runs: dict[str, list[tuple[float, int, int]]] = {"clean": [], "hostile": []}
    for attempt in range(_REPEATS):
        for name, maildir in (("clean", clean), ("hostile", hostile)):
            runs[name].append(_run(ctx, base / f"{name}-{attempt}", maildir))
    clean_s = median([wall for wall, _, _ in runs["clean"]])
    hostile_s = median([wall for wall, _, _ in runs["hostile"]])
    parent = max(rss for runs_ in runs.values() for _, rss, _ in runs_)
    tree = max(total for runs_ in runs.values() for _, _, total in runs_)
    messages = len(list((hostile / "cur").iterdir()))
    return [
        Figure(
            "hostile_pdf_run_minus_limit_vs_clean",
            hostile_s - _LIMIT,
            "s",
            baseline=clean_s,
            baseline_name="the same run without the hostile mail",
            target=1.1,
            note=f"{messages} mails; timeouts.extract_document = {_LIMIT:g} s subtracted",
            extra={
                "hostile_runs_s": [round(wall, 2) for wall, _, _ in runs["hostile"]],
                "clean_runs_s": [round(wall, 2) for wall, _, _ in runs["clean"]],
            },
        ),
        Figure(
            "run_parent_peak_rss_mb",
            parent / 1024,
            "MB",
            target=250,
            target_on="value",
            note="the run's own process, hostile and clean runs",
        ),
        Figure(
            "run_all_processes_peak_rss_mb",
            tree / 1024,
            "MB",
            target=400,
            target_on="value",
            note="the run, its fork server and workers together (sampled every 50 ms)",
        ),
    ]


def _run(ctx: Context, work: Path, maildir: Path) -> tuple[float, int, int]:
    """Wall seconds, peak RSS of the run's process and the memory of its whole tree (KiB)."""
    work.mkdir(parents=True)
    config = work / "c.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{work / "db.sqlite"}"\n'
        f'[storage]\ndir = "{work / "docs"}"\n'
        f"[timeouts]\nextract_document = {_LIMIT}\n"
        f'[[accounts]]\nname = "bench"\nmaildir = "{maildir}"\n',
        encoding="utf-8",
    )
    # Exit 1: the hostile document failed (transiently: a timeout), as it should.
    command = invoicesync_command(ctx, config, "--quiet", "run")
    return timed_tree(command, cwd=work, ok=(0, 1))
