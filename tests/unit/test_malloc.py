"""Large buffers go back to the OS when freed, once ``malloc.return_large_buffers`` ran."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Allocates and frees a 20 MB buffer twice (glibc raises its mmap threshold after the
# first free), then prints how much the resident set grew.
_SCRIPT = """
import sys
from invoicesync import malloc
if sys.argv[1] == "tuned":
    assert malloc.return_large_buffers()
def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096
before = rss()
for _ in range(2):
    buffer = b"x" * (20 * 1024 * 1024)
    del buffer
print((rss() - before) // (1024 * 1024))
"""


def _growth_mb(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_a_freed_large_buffer_no_longer_stays_resident() -> None:
    assert _growth_mb("default") >= 15  # glibc's own way: the second buffer stays in the heap
    assert _growth_mb("tuned") <= 2
