"""Hand large buffers back to the OS as soon as they are freed (glibc only).

A 20 MB document arrives as a 27 MB base64 part and is decoded once: a few large
buffers per mail, freed at once. glibc serves such buffers with mmap, but after
the first one is freed it raises its mmap threshold (up to 32 MB) and serves the
next ones from the heap, which keeps them: a first ingest of 10k messages with
five 20 MB attachments peaked at 260 MB instead of 212 MB (``bench/``, memory).
Fixing the threshold at 1 MiB turns that adjustment off.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["MMAP_THRESHOLD", "return_large_buffers"]

MMAP_THRESHOLD = 1024 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)


def return_large_buffers() -> bool:
    """Set glibc's mmap threshold; False where there is no glibc (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own libc: no library search
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
