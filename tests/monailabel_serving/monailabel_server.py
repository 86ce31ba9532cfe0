"""A MONAI Label server for the integration tests: start it on a free local port, query it, stop it by its PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["START_TIMEOUT_S", "free_port", "get", "running_server"]

START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, data: bytes | None = None, timeout: float = 120) -> bytes:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


@contextmanager
def running_server(app: Path, studies: Path, models: list[str], log_path: Path) -> Iterator[tuple[str, dict]]:
    """``monailabel start_server`` on 127.0.0.1 serving ``models``: yields its base URL and its ``/info``; stops the
    server by its PID afterwards (and asserts it stopped)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    monailabel = Path(sys.executable).with_name("monailabel")
    command = [str(monailabel), "start_server", "--app", str(app), "--studies", str(studies)]
    command += ["--conf", "models", ",".join(models), "--host", "127.0.0.1", "--port", str(port)]
    # the `monailabel` script runs `python` from PATH (or MONAILABEL_PYEXE): make it this venv's
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "MONAILABEL_PYEXE": sys.executable}
    log = open(log_path, "wb")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        info = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                info = json.loads(get(f"{base}/info/", timeout=5))
                break
            except OSError:
                time.sleep(2)
        assert info is not None, log_path.read_text()[-3000:]
        yield base, info
    finally:
        os.kill(server.pid, signal.SIGTERM)  # the server's own PID
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
    assert server.poll() is not None
