"""A run with nothing to do must start fast: heavy libraries load only when needed."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("alembic", "openai", "pypdf", "pypdfium2", "requests", "lxml.html", "rich.live")


def test_the_runner_imports_no_heavy_library() -> None:
    code = (
        "import sys, invoicesync.cli, invoicesync.pipeline.runner; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
