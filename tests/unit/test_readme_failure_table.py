"""The README's failure table names real classes, each in the family it claims."""

from __future__ import annotations

import re

from invoicesync import errors
from invoicesync.extract import openai as openai_errors
from invoicesync.fetch import guard
from invoicesync.resilience import breaker
from tests.conftest import ROOT


def _rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("### What happens on each failure", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # skip the header


def test_every_class_in_the_table_exists_and_matches_its_kind() -> None:
    """Each named class exists and is fatal or transient as the table says."""
    rows = _rows()
    assert len(rows) >= 25
    checked = 0
    for _stage, _failure, classes, kind, _action, _why in rows:
        for name in re.findall(r"`(\w+)`", classes):
            cls = next(
                (
                    getattr(m, name)
                    for m in (errors, openai_errors, breaker, guard)
                    if hasattr(m, name)
                ),
                None,
            )
            assert cls is not None, f"README names unknown class {name}"
            if kind.startswith("bug"):  # neither: the outcome policy's own class
                assert issubclass(cls, errors.InvoiceSyncError), name
                assert not issubclass(cls, errors.FatalError | errors.TransientError), name
            else:
                family = errors.FatalError if kind.startswith("fatal") else errors.TransientError
                assert issubclass(cls, family), f"{name} is not {kind}"
            checked += 1
    assert checked >= 30
