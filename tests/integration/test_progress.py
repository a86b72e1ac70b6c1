"""The live progress view: what it shows, and that only a terminal gets it."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from invoicesync.pipeline.summary import AccountSummary, RunResult
from invoicesync.progress import LiveProgress
from tests.conftest import EXAMPLES, write_config


def test_one_line_per_account_with_its_phase_and_counts() -> None:
    out = io.StringIO()
    progress = LiveProgress(Console(file=out, force_terminal=True, width=120))
    result = RunResult(run_id=1, status="running")
    result.accounts = [
        AccountSummary("billing", phase="extracting", seen=40, new_messages=12, documents=9),
        AccountSummary("archive", phase="done", status="partial", invoices=3, duplicates=1),
    ]
    progress.attach(result)
    progress.console.print(progress.render())
    lines = [" ".join(line.split()) for line in out.getvalue().splitlines()]
    assert "billing extracting 40 12 9 0 0" in lines
    assert "archive done (partial) 0 0 0 4 0" in lines


def test_before_the_run_starts_it_shows_just_the_header() -> None:
    out = io.StringIO()
    progress = LiveProgress(Console(file=out, force_terminal=True, width=120))
    progress.console.print(progress.render())
    assert "account" in out.getvalue() and "billing" not in out.getvalue()


def _run(tmp_path: Path, *, terminal: bool, quiet: bool = False) -> str:
    """The CLI's stderr, from a pseudo-terminal or a pipe."""
    config = write_config(
        tmp_path / "c.toml",
        db_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        storage=tmp_path / "docs",
        maildir=EXAMPLES / "mailbox",
    )
    args = [sys.executable, "-m", "invoicesync", "--config", str(config)]
    args += ["--quiet", "run"] if quiet else ["run"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOICESYNC_")}
    if not terminal:
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
        return done.stderr
    main, secondary = pty.openpty()
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=secondary, env={**env, "COLUMNS": "120"}
    )
    os.close(secondary)
    chunks = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif process.poll() is not None:
            break
    process.wait(10)
    os.close(main)
    return b"".join(chunks).decode("utf-8", "replace")


def test_a_terminal_gets_the_live_view(tmp_path: Path) -> None:
    shown = _run(tmp_path, terminal=True)
    assert "phase" in shown and "sample" in shown


def test_a_pipe_or_quiet_gets_no_live_view(tmp_path: Path) -> None:
    assert "phase" not in _run(tmp_path, terminal=False)
    (tmp_path / "q").mkdir()
    assert "phase" not in _run(tmp_path / "q", terminal=True, quiet=True)
