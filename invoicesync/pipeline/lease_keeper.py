"""Keeps one lease (an account's) alive while a run works it."""

from __future__ import annotations

import logging
import threading

from invoicesync.errors import InvoiceSyncError
from invoicesync.store import leases, work
from invoicesync.store.db import Database

__all__ = ["ClaimKeeper", "LeaseKeeper"]

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Holds one lease and renews it from a heartbeat thread every ttl/3 seconds."""

    def __init__(self, database: Database, name: str, owner: str, ttl: float) -> None:
        self._db = database
        self._ttl = ttl
        self.name, self.owner = name, owner
        self.holder: str | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease {name}", daemon=True)

    def acquire(self) -> bool:
        with self._db.transaction() as session:
            if not leases.acquire(session, self.name, self.owner, self._ttl):
                current = leases.holder(session, self.name)
                self.holder = current.owner if current else "unknown"
                return False
        self._thread.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            try:
                with self._db.transaction() as session:
                    if not leases.renew(session, self.name, self.owner, self._ttl):
                        self.lost.set()
                        return
            except InvoiceSyncError as exc:  # a blip: the lease outlives a few missed beats
                log.warning("lease %s not renewed: %s", self.name, exc)

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            with self._db.transaction() as session:
                leases.release(session, self.name, self.owner)
        except InvoiceSyncError as exc:  # it expires by itself
            log.warning("lease %s not released: %s", self.name, exc)


class ClaimKeeper:
    """Renews every document claim of one run (``store.work``) every ttl/3 seconds.

    A claim outlives its run's heartbeat by at most ``ttl``: a killed worker's
    documents become claimable again, a live one's never do. ``stop`` gives back
    whatever is still claimed.
    """

    def __init__(self, database: Database, owner: str, ttl: float) -> None:
        self._db = database
        self.owner = owner
        self.ttl = ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="claims", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                with self._db.transaction() as session:
                    work.renew_documents(session, self.owner, self.ttl)
            except InvoiceSyncError as exc:
                log.warning("document claims not renewed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            with self._db.transaction() as session:
                work.release_documents(session, self.owner)
        except InvoiceSyncError as exc:  # they expire by themselves
            log.warning("document claims not released: %s", exc)
