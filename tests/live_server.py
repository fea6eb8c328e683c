"""A real `vitserve serve` process on 127.0.0.1 for the tests that need one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`vitserve serve ARTIFACT --port P ARGS` in its own process (or `command` instead of `vitserve serve
    ARTIFACT`, e.g. inside a container), its output in a log file next to the artifact."""

    def __init__(self, artifact: Path, *args: str, env: dict[str, str] | None = None,
                 command: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = artifact.parent / f"serve-{self.port}.log"
        command = command or [sys.executable, "-m", "vitserve", "serve", str(artifact)]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([*command, "--port", str(self.port), *args],
                                         stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(self.output())

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        return code
