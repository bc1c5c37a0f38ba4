"""pytest plugin: a small trained tagger and real Triton servers on free loopback ports.

Load it with ``pytest_plugins = ["triton_fixture"]`` (tests/ is on sys.path).  No mocks:
``triton_server`` runs ``python -m qgcal.inference.serve`` (pytriton's real tritonserver)
in its own session, polls readiness with tritonclient, stops it with SIGINT at the end and
asserts that no process, /dev/shm segment or workspace directory is left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pytest

from qgcal.inference.synthetic import synthetic_jets
from qgcal.training import TrainResult, train_tagger

FEATURES = ("pt", "nTracks", "trackWidth", "trackC1")
MODEL_NAME = "qgcal_tagger"
SHM = Path("/dev/shm")
TMP = Path(tempfile.gettempdir())


def free_port() -> int:
    """A loopback port that was free a moment ago (bind port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


closed_port = free_port  # nobody listens there: a "server down" address


def feature_matrix(columns: Mapping[str, np.ndarray], features: Sequence[str] = FEATURES) -> np.ndarray:
    return np.ascontiguousarray(np.column_stack([columns[f] for f in features]), dtype=np.float32)


@dataclass
class Tagger:
    path: Path
    result: TrainResult


def _shm_names() -> set[str]:
    return set(os.listdir(SHM)) if SHM.is_dir() else set()


def _model_folders() -> set[str]:
    # tritonserver writes $TMPDIR/folderXXXXXX for models loaded with override files
    return {p.name for p in TMP.glob("folder*")}


def _ours(name: str) -> bool:
    # Python-backend stubs (psm_*), pytriton's proxy (pytrtion<pid>-*), and the stub's
    # multiprocessing semaphores (sem.mp-*, released by its resource tracker shortly after).
    return name.startswith(("psm_", "pytrtion", "sem.mp-"))


@dataclass
class ServerProcess:
    """A Triton server subprocess in its own session, with leftover accounting."""

    argv: list[str]
    log_path: Path
    grpc_port: int
    http_port: int
    env: dict[str, str] | None = None
    watch_dirs: list[Path] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    children: list[psutil.Process] = field(default_factory=list)
    shm_before: set[str] = field(default_factory=set)
    folders_before: set[str] = field(default_factory=set)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def start(self, model_names: Sequence[str], timeout: float = 60.0) -> ServerProcess:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        self.shm_before = _shm_names()
        self.folders_before = _model_folders()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        client = grpcclient.InferenceServerClient(self.grpc_url)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if all(client.is_model_ready(name, client_timeout=1.0) for name in model_names):
                        break
                except InferenceServerException:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    self.stop(check=False)
                    raise RuntimeError(f"server not ready after {timeout} s:\n{self.log_tail()}")
                time.sleep(0.2)
        finally:
            client.close()
        self.children = psutil.Process(self.proc.pid).children(recursive=True)
        return self

    def stop(self, sig: int = signal.SIGINT, *, check: bool = True, timeout: float = 30.0) -> float:
        """Stop with ``sig``; killpg only as a last resort; return the seconds it took."""
        assert self.proc is not None
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
                if check:
                    raise AssertionError(f"server ignored signal {sig}; killed:\n{self.log_tail()}")
        elapsed = time.monotonic() - t0
        if check:
            self.assert_nothing_left()
        return elapsed

    def assert_nothing_left(self, grace: float = 8.0) -> None:
        """No child process, no new /dev/shm segment of ours, no new $TMPDIR/folder*,
        empty watched dirs."""
        deadline = time.monotonic() + grace
        while True:
            alive = [p for p in self.children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            shm = sorted(n for n in _shm_names() - self.shm_before if _ours(n))
            dirs = [str(p) for d in self.watch_dirs if d.exists() for p in d.iterdir()]
            dirs += sorted(str(TMP / n) for n in _model_folders() - self.folders_before)
            if not (alive or shm or dirs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not alive, f"processes left behind: {[p.pid for p in alive]}"
        assert not shm, f"/dev/shm segments left behind: {shm}"
        assert not dirs, f"workspace files left behind: {dirs}"


@pytest.fixture(scope="session")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> Tagger:
    """A small BDT trained on synthetic jets where width/C1 add information to nTracks."""
    columns = synthetic_jets(40_000, seed=11)
    result = train_tagger(columns, features=FEATURES, seed=3, max_iter=40, max_leaf_nodes=15)
    path = tmp_path_factory.mktemp("model") / "tagger.skops"
    result.save(path)
    return Tagger(path=path, result=result)


@pytest.fixture(scope="session")
def jets_120k() -> np.ndarray:
    """Feature matrix of 120k fresh jets, with a few NaNs (the model routes them)."""
    return feature_matrix(synthetic_jets(120_000, seed=99, nan_fraction=0.002))


def serve_process(model_path: Path, work: Path, workspace: Path) -> ServerProcess:
    """``python -m qgcal.inference.serve`` on two free ports.

    ``workspace`` must be a short path: pytriton's IPC socket paths live there (<=107 bytes).
    """
    grpc_port, http_port = free_port(), free_port()
    argv = [
        sys.executable,
        "-m",
        "qgcal.inference.serve",
        str(model_path),
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        "--model-name",
        MODEL_NAME,
        "--max-batch-size",
        "131072",
        "--workspace",
        str(workspace),
    ]
    return ServerProcess(
        argv=argv,
        log_path=work / "server.log",
        grpc_port=grpc_port,
        http_port=http_port,
        watch_dirs=[workspace],
    )


@pytest.fixture
def short_workspace() -> Iterator[Path]:
    """A short, empty directory under /tmp (pytest's tmp paths are too deep for IPC sockets)."""
    path = Path(tempfile.mkdtemp(prefix="qgt", dir="/tmp"))
    yield path
    leftovers = list(path.iterdir())
    shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, f"server workspace not cleaned: {leftovers}"


# module scope: the server's leftover check covers only the tests that use it; a session-long
# server would also count semaphores leaked by other modules' deliberately killed processes
@pytest.fixture(scope="module")
def triton_server(tagger: Tagger, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workspace = Path(tempfile.mkdtemp(prefix="qgt", dir="/tmp"))
    try:
        server = serve_process(tagger.path, tmp_path_factory.mktemp("triton"), workspace)
        server.start([MODEL_NAME])
        yield server
        server.stop(signal.SIGINT)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
