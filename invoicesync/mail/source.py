"""The interface every mail source implements: local files now, IMAP later."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from invoicesync.models import MailRef

__all__ = ["MailSource"]


class MailSource(Protocol):
    """A mailbox the pipeline reads from.

    ``scan`` lists the messages of one folder as stable ``MailRef`` values (the
    pipeline decides which are new); ``fetch`` returns one message's raw bytes.
    Errors are raised as the project's own (``TransientError`` / ``FatalError``).
    """

    account: str
    #: The remote endpoint (e.g. ``imap.example.com:993``) its circuit breaker is keyed by;
    #: None for local sources.
    endpoint: str | None

    def folders(self) -> Sequence[str]: ...

    def scan(self, folder: str) -> Iterator[MailRef]: ...

    def fetch(self, ref: MailRef) -> bytes: ...

    def close(self) -> None: ...
