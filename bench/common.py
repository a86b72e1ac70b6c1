"""What every benchmark figure shares: the result record, the run context, timing helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Figure:
    """One measured figure: ``value`` against ``baseline`` (same run), checked against ``target``.

    ``ratio`` is value / baseline when there is a baseline. ``target`` is the bound the
    README states for the ratio (or for the value when ``target_on`` is "value");
    ``holds`` says whether it was met (None: no target).
    """

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None
    target: float | None = None
    target_on: str = "ratio"  # ratio | value
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]

    @property
    def holds(self) -> bool | None:
        if self.target is None:
            return None
        measured = self.ratio if self.target_on == "ratio" else self.value
        return measured is not None and measured <= self.target


@dataclass
class Context:
    """Sizes and places for one ``bench/run`` invocation."""

    work: Path  # scratch directory, removed afterwards
    messages: int = 2000
    latency: float = 0.3
    noop_sizes: tuple[int, ...] = (1000, 10000, 50000)
    memory_sizes: tuple[int, ...] = (1000, 10000)
    workers_accounts: int = 30
    #: Share of the PDF mails whose PDF is made byte-unique (another document to store and
    #: extract); the others resend a corpus PDF as is (figures 1 and 4).
    unique_pdfs: float = 0.75
    pg_admin_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    python: str = sys.executable
    #: Results one figure module computes for another (e.g. the mailbox ladder that the
    #: no-op and memory figures share), by key.
    shared: dict[str, Any] = field(default_factory=dict)


def timed(args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process, which must exit 0.

    The child is started by a tiny ``python -S`` launcher (``_LAUNCHER``) that forks, execs
    ``args``, times it and reports ``wait4``'s ``ru_maxrss``. Started from this process
    directly, the child's ``ru_maxrss`` would be at least *our* peak RSS: Linux carries the
    high-water mark of the pre-exec address space into the exec'd program, and subprocess
    forks with vfork, so that address space is ours — hundreds of MB once mailboxes have
    been generated. The launcher's own ~10 MB is the floor instead.
    """
    wall, rss, _ = _launch(args, cwd=cwd, env=env, sample=False)
    return wall, rss


def timed_tree(
    args: list[str],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    ok: tuple[int, ...] = (0,),
) -> tuple[float, int, int]:
    """``timed`` (the child may exit with any of ``ok``), plus the memory of the child
    and all its descendants together (KiB, see ``tree_rss``).

    The tree (the run, its fork server and parsing workers) is sampled from ``/proc``
    every 50 ms: a peak shorter than that can be missed, which ``wait4`` cannot report
    for processes that are not our children.
    """
    return _launch(args, cwd=cwd, env=env, sample=True, ok=ok)


def _launch(
    args: list[str],
    *,
    cwd: Path,
    env: dict[str, str] | None,
    sample: bool,
    ok: tuple[int, ...] = (0,),
) -> tuple[float, int, int]:
    import threading

    read_end, write_end = os.pipe()
    peak = [0]
    with tempfile.TemporaryFile() as err:
        try:
            process = subprocess.Popen(
                [sys.executable, "-S", "-c", _LAUNCHER, str(write_end), *args],
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdout=subprocess.DEVNULL,
                stderr=err,
                pass_fds=(write_end,),
            )
        finally:
            os.close(write_end)
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                launcher, total = tree_rss(process.pid)
                own = _pss(process.pid, fallback=launcher)
                peak[0] = max(peak[0], total - own)  # the launcher is not the run
                done.wait(0.05)

        sampler = threading.Thread(target=watch, daemon=True)
        if sample:
            sampler.start()
        with os.fdopen(read_end, "rb") as report:
            measured = report.read().split()
        returncode = process.wait()
        done.set()
        if sample:
            sampler.join()
        if returncode not in ok or len(measured) != 2:
            err.seek(0)
            tail = err.read().decode("utf-8", "replace")[-2000:]
            raise RuntimeError(f"{' '.join(args[:5])} exited {returncode}: {tail}")
    return float(measured[0]), int(measured[1]), peak[0]


def tree_rss(root: int) -> tuple[int, int]:
    """(RSS of ``root``, memory of ``root`` and all its descendants together), KiB.

    The total adds up each process's PSS (``smaps_rollup``): workers forked from one fork
    server share its pages, which RSS would count once per process, while the kernel (and
    a container's memory limit) charges them once. Without PSS, RSS is added instead.
    """
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid = int(entry.name)
        parents[pid] = int(fields.get("PPid", "0").strip() or 0)
        rss[pid] = int(fields["VmRSS"].split()[0]) if "VmRSS" in fields else 0
    total = 0
    for pid in rss:
        ancestor = pid
        while ancestor and ancestor != root:
            ancestor = parents.get(ancestor, 0)
        if ancestor == root:
            total += _pss(pid, fallback=rss[pid])
    return rss.get(root, 0), total


def _pss(pid: int, *, fallback: int) -> int:
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return fallback
    for line in rollup.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return fallback


#: argv: report fd, then the command. Forks (so the command's pre-exec address space is this
#: small interpreter's), execs, waits; writes "wall_seconds maxrss_kib" to the report fd.
_LAUNCHER = """
import os, sys, time
fd = int(sys.argv[1])
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.close(fd)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        os.write(2, b"%s: %s" % (sys.argv[2].encode(), str(exc).encode()))
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
os.write(fd, b"%r %d" % (wall, usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def invoicesync_command(ctx: Context, config: Path, *args: str) -> list[str]:
    """``invoicesync --config CONFIG *args`` as users start it: the venv's console script."""
    script = Path(ctx.python).parent / "invoicesync"
    head = [str(script)] if script.exists() else [ctx.python, "-m", "invoicesync"]
    return [*head, "--config", str(config), *args]


def last_run_counts(db_path: Path) -> dict[str, Any]:
    """The ``counts`` JSON of the newest row of ``runs`` in a SQLite database (stdlib only)."""
    import json
    import sqlite3

    connection = sqlite3.connect(db_path)
    try:
        row = connection.execute("SELECT counts FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        connection.close()
    if row is None:
        raise RuntimeError(f"no run recorded in {db_path}")
    counts: dict[str, Any] = json.loads(row[0]) if isinstance(row[0], str) else row[0]
    return counts


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def label(count: int) -> str:
    """1000 -> "1k", 50000 -> "50k", 200 -> "200": figure names."""
    return f"{count // 1000}k" if count >= 1000 and count % 1000 == 0 else str(count)
