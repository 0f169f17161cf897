"""A real ``mlflow server`` on 127.0.0.1 for tests: started, stopped and restarted on the same port and store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """``mlflow server`` with a SQLite backend store and proxied artifacts, both under ``root``."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> MlflowServer:
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{(self.root / 'backend.db').as_posix()}",
             "--artifacts-destination", (self.root / "artifacts").as_posix(), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("mlflow server did not answer /health in time")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: uvicorn and helpers too
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        # the port must refuse connections before we report the server as down
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)


_TEMPLATE: list[Path] = []


def sqlite_store(dest: Path) -> str:
    """A ready SQLite tracking store in ``dest`` (``mlflow.db``, as the default URI names it).

    Creating a store runs MLflow's schema migrations (seconds); they run once per test session into
    a template that later calls copy.
    """
    import shutil
    import tempfile

    from search.tracking.store import check_tracking_uri, default_tracking_uri

    if not _TEMPLATE:
        folder = Path(tempfile.mkdtemp(prefix="fusetune-mlflow-template-"))
        check_tracking_uri(default_tracking_uri(folder))  # creates and migrates the store
        _TEMPLATE.append(folder / "mlflow.db")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE[0], dest / "mlflow.db")
    return default_tracking_uri(dest)
