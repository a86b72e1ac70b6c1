"""A real Prometheus Pushgateway for the metrics tests.

Load as a pytest plugin (``pytest_plugins = ["tests.pushgateway"]``). The ``pushgateway``
fixture starts Debian's ``/usr/bin/prometheus-pushgateway`` as a child process on a free
loopback port, memory only (no persistence file, nothing under ``/var/lib``), waits until
it answers ``/-/ready`` and stops it at teardown. It yields a :class:`Pushgateway`.

Needs ``apt-get install -y prometheus-pushgateway``. Without the binary the fixture
fails (not skips), so a missing server can't silently turn the push tests green. Only
the binary is used; the package's systemd service is neither needed nor touched.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

__all__ = ["Pushgateway", "free_port", "pushgateway"]

BINARY = Path("/usr/bin/prometheus-pushgateway")
INSTALL_HINT = "install it with: apt-get install -y prometheus-pushgateway"
HOST = "127.0.0.1"
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class Pushgateway:
    """A running Pushgateway: push to ``url``, read back ``metrics_text()``."""

    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def metrics_text(self) -> str:
        """What Prometheus would scrape from the gateway right now."""
        with requests.get(f"{self.url}/metrics", timeout=5) as response:
            response.raise_for_status()
            return response.text


def free_port() -> int:
    """A loopback port nobody listens on right now (it may be taken again later)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _ready(url: str) -> bool:
    try:
        with requests.get(f"{url}/-/ready", timeout=0.5) as response:
            return response.status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[Pushgateway]:
    """A fresh, empty Pushgateway on a free loopback port, for one test."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: {INSTALL_HINT}", pytrace=False)
    for _attempt in range(3):  # another process may grab the free port before we bind it
        gateway = Pushgateway(port=free_port(), log_path=tmp_path / "pushgateway.log")
        with gateway.log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    str(BINARY),
                    f"--web.listen-address={HOST}:{gateway.port}",
                    "--persistence.file=",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while process.poll() is None and time.monotonic() < deadline:
                if _ready(gateway.url):
                    break
                time.sleep(0.05)
            else:
                log_tail = gateway.log_path.read_text(errors="replace")[-2000:]
                if process.returncode is not None and "address already in use" in log_tail:
                    continue
                pytest.fail(
                    f"pushgateway did not start on port {gateway.port} "
                    f"(exit code {process.returncode}):\n{log_tail}",
                    pytrace=False,
                )
            yield gateway
            return
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    pytest.fail("pushgateway: no free port after 3 attempts", pytrace=False)
