"""The command line as a user meets it: exit codes and one-line errors, in a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import EXAMPLES, write_config


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoicesync", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_misspelt_key_exits_2_with_one_line(tmp_path: Path) -> None:
    """A misspelt key prints one line naming it, no traceback, exit code 2."""
    config = tmp_path / "bad.toml"
    config.write_text('[database]\nurl = "sqlite:///x.db"\nurll = "typo"\n', encoding="utf-8")
    result = _cli("--config", str(config), "run", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"invoicesync: config error: database.urll: unknown key (in {config})"]
    assert not (tmp_path / "x.db").exists()


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    """No config file where the environment says is a usage error, not a crash."""
    result = _cli("--config", str(tmp_path / "nowhere.toml"), "status", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "nowhere.toml not found" in result.stderr


def test_usage_error_exits_2(tmp_path: Path) -> None:
    """An unknown command is a usage error with exit code 2."""
    result = _cli("frobnicate", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_missing_maildir_is_fatal_for_the_account(tmp_path: Path) -> None:
    """An account whose mailbox does not exist is reported clearly and the run exits 3."""
    config = write_config(
        tmp_path / "c.toml",
        db_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        storage=tmp_path / "docs",
        maildir=tmp_path / "no-such-mailbox",
    )
    result = _cli("--config", str(config), "run", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "no-such-mailbox" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_run_status_and_export_end_to_end(tmp_path: Path) -> None:
    """run exits 0 on the sample, status shows the run, export writes a JSON file."""
    config = write_config(
        tmp_path / "c.toml",
        db_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        storage=tmp_path / "docs",
        maildir=EXAMPLES / "mailbox",
    )
    run = _cli("--config", str(config), "run", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "sample" in run.stdout
    status = _cli("--config", str(config), "status", cwd=tmp_path)
    assert status.returncode == 0
    assert "recent runs" in status.stdout and " ok " in status.stdout
    out = tmp_path / "invoices.json"
    export = _cli(
        "--config",
        str(config),
        "invoices",
        "export",
        "--format",
        "json",
        "--output",
        str(out),
        cwd=tmp_path,
    )
    assert export.returncode == 0
    assert out.read_text(encoding="utf-8").startswith("[")
