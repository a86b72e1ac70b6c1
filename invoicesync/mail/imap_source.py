"""An IMAP account as a ``MailSource``: incremental scan, selective fetch, post-actions.

- **Incremental**: each folder keeps UIDVALIDITY and the highest UID examined; a
  scan searches only ``UID last+1:*`` (plus the configured filters), so a run with
  no new mail costs a fixed number of round trips whatever the mailbox size. A
  changed UIDVALIDITY rescans the folder; the pipeline then recognises mails
  already stored by Message-ID and documents by sha256.
- **Selective**: BODYSTRUCTURE first (in batches), then only the document parts
  and text bodies, always with ``BODY.PEEK`` so nothing is marked \\Seen by
  accident; a message is never fetched whole.
- **Batched**: once the pipeline has said which messages it will read
  (``prefetch``), messages of the same shape (the same sections to fetch) share one
  ``UID FETCH``, up to ``PREFETCH_BYTES`` of parts held at a time, instead of a
  round trip per message.
- **Post-actions** run only when the pipeline says the mail's work is committed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from typing import Any

from invoicesync.config import AccountSettings, TimeoutSettings
from invoicesync.errors import BadInputError, ProtocolError
from invoicesync.mail.imap_pool import ImapPool
from invoicesync.mail.structure import (
    SNIFF_BYTES,
    FetchPlan,
    Section,
    assemble,
    is_document_prefix,
    plan_fetch,
)
from invoicesync.models import FolderPosition, MailRef

__all__ = ["BATCH", "PREFETCH_BYTES", "ImapSource"]

log = logging.getLogger(__name__)
BATCH = 200  # UIDs per FETCH: bounded responses, few round trips
#: Parts (as the server stores them, transfer-encoded) fetched ahead and held at a time.
#: A single message larger than this is still fetched, alone.
PREFETCH_BYTES = 8 * 1024 * 1024
# Messages looked at for a shared FETCH: the next ones the pipeline will ask for.
_PREFETCH_WINDOW = BATCH


class ImapSource:
    def __init__(
        self,
        account: AccountSettings,
        pool: ImapPool,
        timeouts: TimeoutSettings,
        *,
        max_document_bytes: int,
    ) -> None:
        assert account.imap_host is not None
        self.account = account.name
        self.settings = account
        self.endpoint: str | None = f"{account.imap_host}:{account.port}"
        self.pool = pool
        self.timeouts = timeouts
        self.max_document_bytes = max_document_bytes
        self.positions: dict[str, FolderPosition] = {}
        self._plans: dict[tuple[str, int], FetchPlan] = {}
        self._unreadable: dict[tuple[str, int], BadInputError] = {}
        # Messages the pipeline will fetch next, in order, and the answers fetched ahead.
        self._upcoming: list[tuple[str, int]] = []
        self._next: dict[tuple[str, int], int] = {}
        self._ahead: dict[tuple[str, int], tuple[FetchPlan, dict[bytes, Any]]] = {}
        self._ahead_bytes = 0
        self.bytes_fetched = 0
        self.bodies_fetched = 0
        self.fetch_commands = 0

    def folders(self) -> Sequence[str]:
        return list(self.settings.folders)

    def position(self, folder: str) -> FolderPosition | None:
        """UIDVALIDITY seen by the last scan of ``folder``."""
        return self.positions.get(folder)

    # -------------------------------------------------------------------- scan

    def _criteria(self, start: int) -> list[Any]:
        criteria: list[Any] = ["UID", f"{start}:*"]
        search = self.settings.search
        if search.since is not None:
            criteria += ["SINCE", search.since]
        for field, values in (("FROM", search.from_), ("SUBJECT", search.subject)):
            if values:
                # OR a b c = OR a (OR b c): IMAP's OR is binary.
                terms: list[Any] = [field, values[-1]]
                for value in reversed(values[:-1]):
                    terms = ["OR", field, value, *terms]
                criteria += terms
        return criteria

    def scan(self, folder: str, position: FolderPosition | None = None) -> Iterator[MailRef]:
        """New messages of ``folder`` after ``position``, oldest first."""
        with self.pool.connection() as connection:
            uidvalidity = connection.select(folder)
            same = position is not None and position.uidvalidity == uidvalidity
            start = (position.last_uid or 0) + 1 if same and position else 1
            if not same and position is not None and position.uidvalidity is not None:
                log.warning(
                    "account=%s folder=%s UIDVALIDITY changed (%s -> %s): rescanning",
                    self.account,
                    folder,
                    position.uidvalidity,
                    uidvalidity,
                )
            # "UID n:*" always matches the newest message, even when its UID is below n.
            uids = sorted(u for u in connection.search(self._criteria(start)) if u >= start)
        self.positions[folder] = FolderPosition(uidvalidity=uidvalidity, last_uid=start - 1)
        for offset in range(0, len(uids), BATCH):
            yield from self._describe(folder, uidvalidity, uids[offset : offset + BATCH])

    def _describe(self, folder: str, uidvalidity: int, uids: list[int]) -> Iterator[MailRef]:
        items = ["BODYSTRUCTURE", "RFC822.SIZE", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]
        with self.pool.connection() as connection:
            self._ensure_selected(connection, folder)
            answers = connection.fetch(uids, items)
        for uid in uids:
            data = answers.get(uid)
            if data is None:  # expunged meanwhile
                continue
            try:
                self._plans[(folder, uid)] = self._plan(data[b"BODYSTRUCTURE"])
            except BadInputError as exc:  # fetch() reports it on the item, with no new round trip
                self._unreadable[(folder, uid)] = exc
            header = data.get(b"BODY[HEADER.FIELDS (MESSAGE-ID)]", b"") or b""
            yield MailRef(
                account=self.account,
                folder=folder,
                key=f"{uidvalidity}:{uid}",
                uidvalidity=uidvalidity,
                uid=uid,
                size=data.get(b"RFC822.SIZE"),
                message_id=_message_id(header),
            )

    def _plan(self, bodystructure: Any) -> FetchPlan:
        return plan_fetch(bodystructure, max_document_bytes=self.max_document_bytes)

    def _ensure_selected(self, connection: Any, folder: str) -> None:
        if connection.selected != folder:
            uidvalidity = connection.select(folder)
            known = self.positions.get(folder)
            if known is not None and known.uidvalidity != uidvalidity:
                raise ProtocolError(f"UIDVALIDITY of {folder} changed during the run")

    # ------------------------------------------------------------------- fetch

    def prefetch(self, refs: Sequence[MailRef]) -> None:
        """The messages the pipeline will fetch next, in this order (replaces any earlier list)."""
        self._upcoming = [(ref.folder, ref.uid) for ref in refs if ref.uid is not None]
        self._next = {key: index for index, key in enumerate(self._upcoming)}
        self._ahead.clear()
        self._ahead_bytes = 0

    def fetch(self, ref: MailRef) -> bytes:
        """The message rebuilt from its header and the parts that matter."""
        assert ref.uid is not None
        key = (ref.folder, ref.uid)
        unreadable = self._unreadable.pop(key, None)
        if unreadable is not None:
            self._plans.pop(key, None)
            raise unreadable
        self._drop_passed_over(key)
        ahead = self._ahead.pop(key, None)
        if ahead is not None:
            self._plans.pop(key, None)
            known, ready = ahead
            self._ahead_bytes -= _answer_bytes(ready)
            return self._assembled(known, ready)
        with self.pool.connection() as connection:
            self._ensure_selected(connection, ref.folder)
            plan = self._plans.pop(key, None)
            if plan is None:
                described = connection.fetch([ref.uid], ["BODYSTRUCTURE"]).get(ref.uid)
                if described is None:
                    raise BadInputError(f"message {ref.key} is gone from {ref.folder}")
                plan = self._plan(described[b"BODYSTRUCTURE"])
            plan = replace(plan, sections=self._sniffed(connection, ref.uid, plan.sections))
            answer = self._fetch_group(connection, ref, plan)
        return self._assembled(plan, answer)

    def _drop_passed_over(self, key: tuple[str, int]) -> None:
        """Forget answers fetched ahead for mails before ``key`` that were never asked for."""
        index = self._next.get(key)
        if index is None or not self._ahead:
            return
        for stale in [k for k in self._ahead if self._next.get(k, index) < index]:
            self._ahead_bytes -= _answer_bytes(self._ahead.pop(stale)[1])

    def _fetch_group(self, connection: Any, ref: MailRef, plan: FetchPlan) -> dict[bytes, Any]:
        """Fetch ``ref`` and, in the same command, upcoming messages of the same shape.

        The others' answers wait in ``_ahead`` (at most ``PREFETCH_BYTES`` of them) until
        the pipeline asks for them.
        """
        assert ref.uid is not None
        items = _items(plan)
        group = [ref.uid]
        budget = PREFETCH_BYTES - self._ahead_bytes - _size(plan)
        start = self._next.get((ref.folder, ref.uid))
        if start is not None:
            for folder, uid in self._upcoming[start + 1 : start + _PREFETCH_WINDOW]:
                other = self._plans.get((folder, uid))
                if folder != ref.folder or other is None or (folder, uid) in self._ahead:
                    continue
                # Ambiguous parts need a first look of their own: those messages go alone.
                if any(s.kind == "sniff" for s in other.sections):
                    continue
                size = _size(other)
                if size > budget or _items(other) != items:
                    continue
                budget -= size
                group.append(uid)
        try:
            answers = connection.fetch(group, items)
        except ProtocolError:
            if len(group) == 1:
                raise
            # A server may refuse a whole FETCH for one bad message: ask for this one alone,
            # so that only the bad one fails, on its own turn.
            group = [ref.uid]
            answers = connection.fetch(group, items)
        self.fetch_commands += 1
        for uid in group[1:]:
            answer = answers.get(uid)
            if answer is not None:  # an expunged one is found missing when its turn comes
                self._ahead[(ref.folder, uid)] = (self._plans[(ref.folder, uid)], answer)
                self._ahead_bytes += _answer_bytes(answer)
        mine: dict[bytes, Any] | None = answers.get(ref.uid)
        if mine is None:
            raise BadInputError(f"message {ref.key} is gone from {ref.folder}")
        return mine

    def _assembled(self, plan: FetchPlan, answer: dict[bytes, Any]) -> bytes:
        self.bytes_fetched += _answer_bytes(answer)
        self.bodies_fetched += 1
        sections = plan.sections
        parts = [
            (
                section,
                _part(answer, f"BODY[{section.number}.MIME]"),
                _part(answer, f"BODY[{section.number}]"),
            )
            for section in sections
        ]
        nested = {number: _part(answer, f"BODY[{number}.HEADER]") for number in plan.nested}
        return assemble(_part(answer, "BODY[HEADER]"), parts, nested)

    def _sniffed(self, connection: Any, uid: int, sections: Sequence[Section]) -> list[Section]:
        """Ambiguous parts are kept only if their first bytes look like a document."""
        unsure = [s for s in sections if s.kind == "sniff"]
        if not unsure:
            return list(sections)
        items = [f"BODY.PEEK[{s.number}]<0.{SNIFF_BYTES}>" for s in unsure]
        answer = connection.fetch([uid], items).get(uid, {})
        keep = {
            s.number
            for s in unsure
            if is_document_prefix(
                answer.get(f"BODY[{s.number}]<0>".encode(), b"") or b"", s.encoding
            )
        }
        return [s for s in sections if s.kind != "sniff" or s.number in keep]

    # ------------------------------------------------------------ post-actions

    def after_ingest(self, folder: str, uids: Sequence[int]) -> None:
        """Apply ``after_ingest`` to mails whose work is committed."""
        action = self.settings.after_ingest
        if action == "none" or not uids:
            return
        with self.pool.connection() as connection:
            self._ensure_selected(connection, folder)
            if action == "seen":
                connection.add_flags(uids, [b"\\Seen"])
            elif action == "flag":
                connection.add_flags(uids, [b"\\Flagged"])
            elif action.startswith("move:"):
                connection.move(uids, action.removeprefix("move:"))
            elif action.startswith("label:"):
                connection.add_labels(uids, [action.removeprefix("label:")])

    def stats(self) -> dict[str, int]:
        """Connection and transfer counters for the run summary."""
        return {
            **asdict(self.pool.stats),
            "bodies_fetched": self.bodies_fetched,
            "fetch_commands": self.fetch_commands,
            "bytes_fetched": self.bytes_fetched,
        }

    def close(self) -> None:
        self._ahead.clear()
        self._ahead_bytes = 0
        self.pool.logout_all()

    def abort(self) -> None:
        """Drop every connection at once (the watchdog's stop)."""
        self.pool.close_all()


def _items(plan: FetchPlan) -> list[str]:
    items = ["BODY.PEEK[HEADER]"]
    for number in plan.nested:
        items.append(f"BODY.PEEK[{number}.HEADER]")
    for section in plan.sections:
        items += [f"BODY.PEEK[{section.number}.MIME]", f"BODY.PEEK[{section.number}]"]
    return items


def _size(plan: FetchPlan) -> int:
    return sum(section.size for section in plan.sections)


def _answer_bytes(answer: dict[bytes, Any]) -> int:
    return sum(len(v) for v in answer.values() if isinstance(v, bytes))


def _part(answer: dict[bytes, Any], key: str) -> bytes:
    """One FETCH item's bytes (imapclient answers NIL as None)."""
    value = answer.get(key.encode())
    return value if isinstance(value, bytes) else b""


def _message_id(header: bytes) -> str | None:
    text = header.decode("ascii", "replace")
    _, _, value = text.partition(":")
    value = " ".join(value.split())
    return value or None
