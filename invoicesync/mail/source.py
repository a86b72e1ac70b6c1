"""The interface every mail source implements: local files now, IMAP later."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from invoicesync.models import FolderPosition, MailRef

__all__ = ["MailSource"]


class MailSource(Protocol):
    """A mailbox the pipeline reads from.

    ``scan`` lists the messages of one folder as stable ``MailRef`` values (the
    pipeline decides which are new); ``fetch`` returns one message's bytes (for
    IMAP: rebuilt from only the parts that matter).
    Errors are raised as the project's own (``TransientError`` / ``FatalError``).
    """

    account: str
    #: The remote endpoint (e.g. ``imap.example.com:993``) its circuit breaker is keyed by;
    #: None for local sources.
    endpoint: str | None

    def folders(self) -> Sequence[str]: ...

    def scan(self, folder: str, position: FolderPosition | None = None) -> Iterator[MailRef]:
        """Messages after ``position`` (incremental sources) or all of them (local files)."""
        ...

    def position(self, folder: str) -> FolderPosition | None:
        """Where the last scan of ``folder`` ended; None for sources without positions."""
        ...

    def fetch(self, ref: MailRef) -> bytes: ...

    def after_ingest(self, folder: str, uids: Sequence[int]) -> None:
        """The post-action for mails whose work is committed (flag, move …); may be a no-op."""
        ...

    def close(self) -> None: ...
