"""Functions the worker-pool tests run in worker processes (importable by name)."""

from __future__ import annotations

import os
import signal
import time

from invoicesync.errors import BadDocumentError


def echo(value: object) -> object:
    return value


def pid() -> int:
    return os.getpid()


def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def spin() -> None:
    """Pure-Python busy loop: only a kill ends it."""
    while True:
        pass


def allocate(megabytes: int) -> int:
    block = bytearray(megabytes * 1024 * 1024)
    return len(block)


def bad_document() -> None:
    raise BadDocumentError("not a PDF", stage="extract")


def bug() -> None:
    raise KeyError("ı")


def die(signal_number: int) -> None:
    os.kill(os.getpid(), signal_number)
    time.sleep(5)


def abort() -> None:
    os.abort()


def ignore_term_and_sleep(seconds: float) -> str:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)
    return "woke"


def walk_mails(raws: list[bytes]) -> list[object]:
    """A stand-in MIME walk: b"hang" never returns, b"boom" kills the worker, else echo."""
    from invoicesync.errors import MalformedMailError
    from invoicesync.models import ParsedMail

    results: list[object] = []
    for raw in raws:
        if raw == b"hang":
            spin()
        if raw == b"boom":
            os.kill(os.getpid(), signal.SIGKILL)
        if raw == b"bad":
            results.append(MalformedMailError("not a mail", stage="ingest"))
            continue
        results.append(ParsedMail(subject=raw.decode()))
    return results
