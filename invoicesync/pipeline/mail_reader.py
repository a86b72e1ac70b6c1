"""The MIME walk of fetched mails, in the worker processes, a batch per call.

A mail is a stranger's bytes like any document: an encoded-word storm in its
Subject or a megabyte of addresses in its From must cost its own limit, never
the run. Mails go to a worker in batches, so the per-mail cost stays that of the
walk itself; should a batch be cut off (a timeout, a dead worker, the memory
limit), its mails are walked again one by one, so that the culprit fails alone
and the others are stored.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence

from invoicesync.errors import (
    BugError,
    InvoiceSyncError,
    WorkerCrashed,
    WorkerMemoryError,
    WorkerTimeout,
)
from invoicesync.mail.mime import parse_mail
from invoicesync.models import ParsedMail
from invoicesync.pipeline.outcomes import Stage, as_error
from invoicesync.resilience.processes import RemoteBug, WorkerPool

__all__ = ["MailReader", "parse_mails"]

MailResult = ParsedMail | InvoiceSyncError


def parse_mails(raws: Sequence[bytes]) -> list[MailResult]:
    """Worker side: each mail walked, or the error that stopped it (never the batch)."""
    results: list[MailResult] = []
    for raw in raws:
        try:
            results.append(parse_mail(raw))
        except InvoiceSyncError as exc:
            results.append(exc)
        except Exception as exc:  # a parser bug: this mail fails with kind bug, not the batch
            where = traceback.extract_tb(exc.__traceback__)[-1]
            results.append(
                BugError(
                    f"{type(exc).__name__}: {str(exc)[:300]} "
                    f"(at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})",
                    stage="ingest",
                )
            )
    return results


class MailReader:
    """``parse`` a batch of raw mails in ``pool``'s workers, each under ``timeout``."""

    def __init__(
        self,
        pool: WorkerPool,
        *,
        timeout: float,
        walk: Callable[[Sequence[bytes]], list[MailResult]] = parse_mails,
    ) -> None:
        self.pool = pool
        self.timeout = timeout
        self._walk = walk  # run in the worker: importable by name

    def parse(
        self, raws: Sequence[bytes], *, check: Callable[[], None] | None = None
    ) -> list[MailResult]:
        if not raws:
            return []
        what = "mail" if len(raws) == 1 else f"a batch of {len(raws)} mails"
        try:
            return self.pool.call(
                self._walk, list(raws), timeout=self.timeout, what=what, check=check
            )
        except (WorkerTimeout, WorkerCrashed, WorkerMemoryError, RemoteBug) as exc:
            if check is not None:
                check()  # a stop killed the worker: not the mails' fault
            if len(raws) == 1:
                return [_as_error(exc)]
        return [self.parse([raw], check=check)[0] for raw in raws]


def _as_error(exc: Exception) -> InvoiceSyncError:
    error = as_error(exc, Stage.INGEST)
    error.stage = Stage.INGEST.value  # the pool names its own stage
    return error
