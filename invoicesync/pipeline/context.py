"""What one run's stages share, passed to each explicitly: ``RunContext`` and ``AccountScope``.

The runner builds one ``RunContext`` (database, files, breakers, the readers of
documents and mails, the stop switch …); each account's work gets an
``AccountScope`` on top (its deadline, its lease), which also holds the checks
made between two items.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from sqlalchemy.orm import Session

from invoicesync.config import AccountSettings, Settings
from invoicesync.errors import AccountStopped, RunAborted
from invoicesync.extract.select import ExtractorSelection
from invoicesync.mail.source import MailSource
from invoicesync.pipeline.document_reader import DocumentReader
from invoicesync.pipeline.lease_keeper import LeaseKeeper
from invoicesync.pipeline.mail_reader import MailReader
from invoicesync.resilience.breaker import Breakers
from invoicesync.resilience.timeouts import Deadline
from invoicesync.resilience.watchdog import StopSwitch
from invoicesync.store.db import Database
from invoicesync.store.files import DocumentFiles

__all__ = ["AccountScope", "RunContext"]

T = TypeVar("T")


class Transact(Protocol):
    """One transaction with the store's retries: ``tx(work)`` commits ``work(session)``."""

    def __call__(self, work: Callable[[Session], T], /) -> T: ...


@dataclass
class RunContext:
    """The run's shared parts. ``owner`` is set once the run row exists."""

    settings: Settings
    db: Database
    switch: StopSwitch
    files: DocumentFiles
    breakers: Breakers
    extractors: ExtractorSelection
    reader: DocumentReader
    mails: MailReader
    deadline: Deadline
    tx: Transact
    source_factory: Callable[[AccountSettings], MailSource] | None = None
    owner: str = "unstarted"
    #: Why the model endpoint must not be called again this run (shared by all accounts).
    model_down: list[str] = field(default_factory=list)
    #: Documents this run has claimed already: each is tried once per run.
    tried_documents: set[int] = field(default_factory=set)
    tried_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def max_bytes(self) -> int:
        return int(self.settings.storage.max_document_mb * 1024 * 1024)

    def check_run(self) -> None:
        """A stop, or the run's deadline."""
        self.switch.raise_if_tripped()
        if self.deadline.expired:
            raise RunAborted(f"run deadline of {self.settings.timeouts.run:g}s reached")


@dataclass
class AccountScope:
    """One account's part of the run: its deadline and lease (none for the backlog)."""

    ctx: RunContext
    deadline: Deadline
    lease: LeaseKeeper | None = None
    #: Whether mails get the account's after_ingest action once their documents are done.
    wants_post_action: bool = False

    def check(self) -> None:
        """Between two items: a stop, a deadline passed, the lease lost."""
        self.ctx.check_run()
        if self.deadline.expired:
            raise AccountStopped(
                "deadline", f"account deadline of {self.ctx.settings.timeouts.account:g}s reached"
            )
        if self.lease is not None and self.lease.lost.is_set():
            raise AccountStopped("partial", "lease lost to another run; the rest stays pending")

    def check_item(self) -> None:
        """While a worker parses: a stop or the account's deadline ends the item."""
        self.ctx.switch.raise_if_tripped()
        if self.deadline.expired:
            raise AccountStopped(
                "deadline", f"account deadline of {self.ctx.settings.timeouts.account:g}s reached"
            )
