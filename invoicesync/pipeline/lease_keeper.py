"""Keeps one lease (an account's) alive while a run works it."""

from __future__ import annotations

import logging
import threading

from invoicesync.errors import InvoiceSyncError
from invoicesync.store import leases
from invoicesync.store.db import Database

__all__ = ["LeaseKeeper"]

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
