"""Serve a trained tagger with a real Triton Inference Server (pytriton), on loopback.

Why pytriton: it bundles a real Triton server (2.51) and binds a Python callable as a
model, so ``qgcal serve`` needs no container; jobs then talk KServe v2 (gRPC/HTTP) to it
exactly as they would to a facility's server.

What this module takes care of, learned on these machines (see docs/triton.md):
- the Python-backend stub links ``libpython3.X.so``; with a pyenv/conda interpreter it may
  pick the system's library and fail to load the model, so ``sys.base_prefix/lib`` is put
  first on ``LD_LIBRARY_PATH`` before pytriton spawns tritonserver (it copies our
  environment at that moment, so no re-exec is needed);
- pytriton copies the server into a workspace; we give it a fresh temporary directory and
  delete it, and SIGINT *and* SIGTERM trigger the same clean stop (tritonserver, its
  Python-backend stubs, the /dev/shm segments, the workspace and the model folders
  tritonserver writes to $TMPDIR all go);
- pytriton's ZeroMQ IPC sockets live in the workspace and a Unix socket path has at most
  107 bytes, so a deep workspace is refused up front instead of failing at model load;
- a busy port makes tritonserver exit while pytriton keeps polling for two minutes, so
  ports are checked before starting; the metrics endpoint is off (one port fewer);
- with several model instances, pytriton's stubs start concurrently and a second one can
  connect to the first one's handshake socket before it listens (seen under load), so that
  one failure is retried with a fresh server (``_START_ATTEMPTS``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InferenceError, import_optional
from .model_io import load_model
from .triton_client import (
    CONSTITUENTS_INPUT,
    COUNTS_INPUT,
    DEVICE_PARAMETER,
    EMPTY_SENTINEL_ROWS,
    SHA_PARAMETER,
)

__all__ = ["check_port_free", "is_constituent_model", "loopback_config", "main", "serve", "stub_library_path"]

log = logging.getLogger(__name__)
_MAX_SOCKET_PATH = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


def stub_library_path() -> str | None:
    """Directory holding this interpreter's ``libpython3.X.so.1.0``, if it has one."""
    lib = Path(sys.base_prefix) / "lib"
    name = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    return str(lib) if (lib / name).exists() else None


@contextmanager
def _stub_environment() -> Iterator[None]:
    """Put our libpython first on LD_LIBRARY_PATH while the server starts and runs."""
    old = os.environ.get("LD_LIBRARY_PATH")
    lib = stub_library_path()
    if lib is not None:
        os.environ["LD_LIBRARY_PATH"] = lib + (os.pathsep + old if old else "")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as tritonserver itself binds: a port whose old connections linger in
        # TIME_WAIT (a server restarted on its ports) is free; one with a listener is not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise InferenceError(
                f"port {port} on {host} is already in use ({exc.strerror}); choose others with --http-port/--grpc-port"
            ) from exc


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM both request a clean stop (only possible in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = lambda signum, frame: stop.set()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def is_constituent_model(path: str | os.PathLike[str]) -> bool:
    """A constituent (torch DeepSets) model: its JSON sidecar names the constituent format."""
    from .constituent_model import FORMAT, sidecar_path

    side = sidecar_path(path)
    try:
        return bool(json.loads(side.read_text()).get("format") == FORMAT)
    except (OSError, ValueError, AttributeError):
        return False


#: start-up attempts with several instances: pytriton's second instance may connect to the first
#: one's handshake socket between its bind and listen (seen under load); the error names this function
_START_ATTEMPTS = 3
_HANDSHAKE_RACE = "get_config_from_handshake_server"
#: with --dynamic-batching on, at most this many queued constituent requests are merged into one forward pass
MAX_MERGED_REQUESTS = 64


def _request_pair(k: int, req: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(constituents [N, k], counts [n]) of one request, checked; a leading batch dim of 1 is dropped."""
    x = np.ascontiguousarray(req[CONSTITUENTS_INPUT], dtype=np.float32).reshape(-1, k)
    c = np.ascontiguousarray(req[COUNTS_INPUT], dtype=np.int64).reshape(-1)
    if int(c.sum()) == 0 and x.shape[0] == EMPTY_SENTINEL_ROWS:
        x = x[:0]  # only empty jets: the client's stand-in for a zero-size tensor
    if int(c.sum()) != x.shape[0] or (c < 0).any():
        raise ValueError(f"COUNTS sum {int(c.sum())} != {x.shape[0]} constituents (or negative counts)")
    return x, c


@dataclass
class ForwardCounts:
    """Requests scored and forward passes run by a constituent model (logged when the server stops).

    Why: with dynamic batching the number of forwards per request says whether the batcher
    merged anything; Triton's statistics endpoint is restricted by pytriton.
    """

    requests: int = 0
    forwards: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, requests: int, forwards: int) -> None:
        with self._lock:
            self.requests += requests
            self.forwards += forwards


def _constituent_binding(
    model_path: str | os.PathLike[str],
    output_name: str,
    *,
    batching: bool = False,
    instances: int = 1,
    counts: ForwardCounts | None = None,
) -> tuple[Any, dict[str, Any]]:
    """(pytriton bind keyword arguments, info) for a constituent model: two inputs.

    ``batching=False`` (the default): each request is scored on its own, exactly as the local
    route scores its batch (hence bit-identical scores when the client sends the same batches).
    Triton's own batcher cannot merge the ragged pair: it concatenates requests along dim 0 of
    every input and splits each output back by the requests' dim-0 sizes, but SCORE has n_i
    rows per request, not N_i (docs/triton.md).

    ``batching=True``: the model gets a batch dimension of one *request* (clients send
    ``[1, N_i, k]`` and ``[1, n_i]``; ``TritonConstituentScorer`` does so when the served
    ``max_batch_size`` is > 0) and Triton's dynamic batcher hands up to
    :data:`MAX_MERGED_REQUESTS` queued requests to one call; this callable concatenates their
    constituents and counts (still a valid flattened pair), runs one forward pass and splits
    the scores by each request's n_i.  Scores then depend on which requests were merged at the
    float32 level (the documented 2e-4 tolerance), no longer bit-identical; and a malformed
    request fails the requests merged with it (pytriton answers a call as a whole).

    ``instances`` model instances (pytriton: one callable per instance; they share the
    network, each forward runs single-threaded).
    """
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    from .constituent_model import load_constituent_model, score_network

    net, meta = load_constituent_model(model_path)
    k = len(meta.features)
    tally = counts if counts is not None else ForwardCounts()

    def infer_alone(requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        out = []
        for req in requests:  # one at a time: never merged (see above)
            x, c = _request_pair(k, req)
            scores = score_network(net, x, c) if c.size else np.empty(0, np.float32)
            out.append({output_name: np.asarray(scores, dtype=np.float32)})
        tally.add(len(requests), len(requests))
        return out

    def infer_merged(requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        pairs = [_request_pair(k, req) for req in requests]
        x = np.concatenate([p[0] for p in pairs])
        c = np.concatenate([p[1] for p in pairs])
        scores = score_network(net, x, c) if c.size else np.empty(0, np.float32)
        bounds = np.cumsum([0] + [len(p[1]) for p in pairs])
        tally.add(len(requests), 1)
        return [{output_name: scores[None, lo:hi]} for lo, hi in itertools.pairwise(bounds)]

    if batching:
        config = ModelConfig(
            batching=True, max_batch_size=MAX_MERGED_REQUESTS, batcher=DynamicBatcher(max_queue_delay_microseconds=0)
        )
        infer = infer_merged
    else:
        config, infer = ModelConfig(batching=False), infer_alone
    bind = {
        "infer_func": [infer] * instances if instances > 1 else infer,
        "inputs": [
            Tensor(name=CONSTITUENTS_INPUT, dtype=np.float32, shape=(-1, k)),
            Tensor(name=COUNTS_INPUT, dtype=np.int64, shape=(-1,)),
        ],
        "outputs": [Tensor(name=output_name, dtype=np.float32, shape=(-1,))],
        "config": config,
    }
    info = {
        "model_sha256": meta.weights_sha256,
        "features": list(meta.features),
        "kind": "constituents",
        "dynamic_batching": batching,
        "instances": instances,
        "max_batch_size": MAX_MERGED_REQUESTS if batching else 0,
    }
    return bind, info


@contextmanager
def _torch_pinned(active: bool) -> Iterator[None]:
    """One intra-op thread and deterministic algorithms for the whole serving time (constituent models).

    Why for the whole process: with several instances the forwards run in concurrent threads
    here, and each call's ``deterministic_torch`` context would otherwise save and restore the
    other's settings mid-forward; with these already set, every save and restore is a no-op.
    """
    if not active:
        yield
        return
    from .constituent_model import deterministic_torch

    with deterministic_torch(1):
        yield


def loopback_config(http_port: int, grpc_port: int) -> Any:
    """The server's Triton settings: HTTP and gRPC on loopback only, no metrics port, a quick exit."""
    from pytriton.triton import TritonConfig

    return TritonConfig(
        http_address="127.0.0.1",
        http_port=http_port,
        grpc_address="127.0.0.1",
        grpc_port=grpc_port,
        allow_metrics=False,
        exit_timeout_secs=5,
        log_verbose=0,
    )


def _advertise_fingerprint(triton: Any, sha256: str, device: str = "cpu") -> None:
    """Put the model fingerprint and the scoring device into the served model config (see TritonScorer).

    pytriton has no public hook for model-config parameters; this uses its model object's
    cached config and degrades to "not advertised" if that internal API changes.
    """
    try:
        for model in triton._model_manager.models:
            params = model._get_triton_model_config().backend_parameters
            params[SHA_PARAMETER] = sha256
            params[DEVICE_PARAMETER] = device
    except Exception as exc:  # noqa: BLE001 - any change in pytriton internals
        log.info("model fingerprint not advertised to clients (pytriton internals changed: %s)", exc)


def _allow_ragged_batches(triton: Any, inputs: list[str]) -> None:
    """Mark ``inputs`` ``allow_ragged_batch`` in the config pytriton loads (constituents, dynamic batching).

    Why: Triton's dynamic batcher groups requests whose variable-size inputs have equal shapes
    only, unless the input allows ragged batches; every constituent request has its own
    ``N_i`` and ``n_i``, so without this nothing would ever be merged.  The Python backend
    still receives the requests one by one (nothing is concatenated by Triton), and
    :func:`_constituent_binding` merges them itself.  pytriton has no public hook for it;
    this wraps its model objects' config method, and a clear error says if that changed.
    """
    try:
        for model in triton._model_manager.models:
            original = model.get_model_config

            def patched(original: Callable[[], dict[str, Any]] = original) -> dict[str, Any]:
                cfg = original()
                for spec in cfg.get("input", []):
                    if spec.get("name") in inputs:
                        spec["allow_ragged_batch"] = True
                return cfg

            model.get_model_config = patched
    except Exception as exc:
        raise InferenceError(
            f"--dynamic-batching on for a constituent model needs pytriton internals that changed ({exc}); "
            "serve with --dynamic-batching off"
        ) from exc


def _remove_model_overrides(workspace: Path) -> None:
    """Delete the model directories tritonserver made for pytriton's models.

    pytriton loads its models through Triton's "load with override files" API, for which
    tritonserver writes ``$TMPDIR/folderXXXXXX``; it deletes them on unload, but when its
    exit timeout expires first (idle HTTP clients hold it open) they stay behind.  Ours
    are the ones whose config names our workspace.
    """
    marker = f'"{workspace}"'
    for folder in Path(tempfile.gettempdir()).glob("folder*"):
        try:
            if marker in (folder / "config.pbtxt").read_text(errors="replace"):
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


def serve(
    model_path: str | os.PathLike[str],
    *,
    http_port: int = 8000,
    grpc_port: int = 8001,
    model_name: str = "qgcal_tagger",
    max_batch_size: int = 131072,
    input_name: str = "FEATURES",
    output_name: str = "SCORE",
    workspace: str | os.PathLike[str] | None = None,
    ready_callback: Callable[[dict[str, Any]], None] | None = None,
    stop_event: threading.Event | None = None,
    dynamic_batching: bool | None = None,
    instances: int = 1,
) -> None:
    """Serve ``model_path`` on 127.0.0.1 until SIGINT/SIGTERM (or ``stop_event``) arrives.

    ``workspace`` is a directory in which a temporary workspace is created and removed at
    the end (default: the system temp dir).  ``ready_callback`` receives the endpoints
    once the model is ready.  Clients must use ``batch_size <= max_batch_size``.
    ``dynamic_batching``: None keeps each model's default (BDT: on; constituent model: off,
    each request scored on its own, see :func:`_constituent_binding`).  ``instances``: model
    instances (pytriton runs each as its own Python-backend stub, the callables in threads here).
    """
    if instances < 1:
        raise InferenceError(f"--instances {instances}: need at least one model instance")
    import_optional("pytriton", "triton", "qgcal serve")
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton

    forward_counts = ForwardCounts()
    if is_constituent_model(model_path):
        bind, model_info = _constituent_binding(
            model_path, output_name, batching=bool(dynamic_batching), instances=instances, counts=forward_counts
        )
    else:
        model = load_model(model_path)
        estimator = model.estimator
        n_features = len(model.meta.features)

        @batch
        def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
            x = np.ascontiguousarray(inputs[input_name], dtype=np.float32)
            scores = estimator.decision_function(x) if len(x) else np.empty(0)
            return {output_name: np.asarray(scores, dtype=np.float32)[:, None]}

        batcher = DynamicBatcher() if dynamic_batching in (None, True) else None
        bind = {
            "infer_func": [infer] * instances if instances > 1 else infer,
            "inputs": [Tensor(name=input_name, dtype=np.float32, shape=(n_features,))],
            "outputs": [Tensor(name=output_name, dtype=np.float32, shape=(1,))],
            "config": ModelConfig(max_batch_size=max_batch_size, batcher=batcher),
        }
        model_info = {
            "model_sha256": model.meta.model_sha256,
            "features": list(model.meta.features),
            "kind": "bdt",
            "dynamic_batching": batcher is not None,
            "instances": instances,
            "max_batch_size": max_batch_size,
        }
    for port in (http_port, grpc_port):
        check_port_free(port)

    stop = stop_event or threading.Event()
    tmp = Path(tempfile.mkdtemp(prefix="qgcal-", dir=workspace))
    # pytriton puts ZeroMQ IPC sockets "<workspace>/<model>_<i>_<j>-server.sock" there;
    # a Unix socket path is limited to 107 bytes and longer ones fail only at model load.
    longest = len(str(tmp / f"w{_START_ATTEMPTS}" / f"{model_name}_99_99-server.sock"))
    if longest > _MAX_SOCKET_PATH:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InferenceError(
            f"workspace {tmp.parent} is too deep for Triton's IPC sockets ({longest} > {_MAX_SOCKET_PATH} "
            "characters with this model name); pass a shorter workspace directory or model name"
        )
    config = loopback_config(http_port, grpc_port)
    triton = None
    try:
        with _stub_environment(), _stop_on_signals(stop), _torch_pinned(model_info["kind"] == "constituents"):
            for attempt in range(_START_ATTEMPTS if instances > 1 else 1):
                triton = Triton(config=config, workspace=tmp / f"w{attempt}")
                triton.bind(model_name=model_name, strict=True, **bind)
                _advertise_fingerprint(triton, model_info["model_sha256"], "cpu")
                if model_info["kind"] == "constituents" and model_info["dynamic_batching"]:
                    _allow_ragged_batches(triton, [CONSTITUENTS_INPUT, COUNTS_INPUT])
                try:
                    triton.run()  # starts tritonserver and waits until the model is ready
                    break
                except Exception as exc:
                    if _HANDSHAKE_RACE not in str(exc) or attempt + 1 == _START_ATTEMPTS:
                        raise
                    log.warning("model instances raced at start-up (pytriton handshake); starting again")
                    triton.stop()
                    _remove_model_overrides(tmp / f"w{attempt}")
                    triton = None
            assert triton is not None
            info = {
                "model_name": model_name,
                "grpc_url": f"127.0.0.1:{grpc_port}",
                "http_url": f"127.0.0.1:{http_port}",
                **model_info,
                "pid": os.getpid(),
            }
            log.info("serving %s: gRPC %s, HTTP %s", model_name, info["grpc_url"], info["http_url"])
            if ready_callback is not None:
                ready_callback(info)
            while not stop.wait(0.5):
                if not triton.is_alive():
                    raise InferenceError(
                        f"Triton server for {model_name!r} on 127.0.0.1:{grpc_port} stopped unexpectedly; "
                        "see its log above"
                    )
            log.info("stopping Triton server for %s", model_name)
    finally:
        if triton is not None:
            triton.stop()
        for attempt in range(_START_ATTEMPTS):  # pytriton may already have removed the workspaces
            _remove_model_overrides(tmp / f"w{attempt}")
        shutil.rmtree(tmp, ignore_errors=True)
        if model_info["kind"] == "constituents":
            log.info(
                "%s scored %d requests in %d forward passes",
                model_name,
                forward_counts.requests,
                forward_counts.forwards,
            )


def main(argv: list[str] | None = None) -> int:
    """``python -m qgcal.inference.serve MODEL``: the test fixture and ``qgcal serve`` use it."""
    parser = argparse.ArgumentParser(prog="python -m qgcal.inference.serve", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model file written by qgcal train (skops BDT or constituent .safetensors)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--model-name", default="qgcal_tagger")
    parser.add_argument("--max-batch-size", type=int, default=131072)
    parser.add_argument("--ready-file", help="write the endpoints as JSON here once ready")
    parser.add_argument("--workspace", help="directory for the temporary server workspace (removed at exit)")
    parser.add_argument("--dynamic-batching", choices=("on", "off"), help="default: on for a BDT, off for constituents")
    parser.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def announce(info: dict[str, Any]) -> None:
        line = json.dumps(info)
        print(f"qgcal serve ready: {line}", flush=True)
        if args.ready_file:
            tmp_file = Path(args.ready_file + ".tmp")
            tmp_file.write_text(line)
            os.replace(tmp_file, args.ready_file)

    try:
        serve(
            args.model,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            model_name=args.model_name,
            max_batch_size=args.max_batch_size,
            ready_callback=announce,
            workspace=args.workspace,
            dynamic_batching=None if args.dynamic_batching is None else args.dynamic_batching == "on",
            instances=args.instances,
        )
    except InferenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
