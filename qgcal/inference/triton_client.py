"""Score jets on a Triton Inference Server (KServe v2 over gRPC or HTTP).

Why this design:
- Everything about the served model (address, name, version, tensor names, dtypes, batch
  size) comes from :class:`~qgcal.inference.config.TritonSettings`, so the same client
  calls any model laid out as "one input [-1, k], one per-row output", e.g. a tracking
  service taking FEATURES [-1, 3] and returning LABELS INT64 [-1].
- Jets go in batches of ``batch_size`` with at most ``max_in_flight`` requests outstanding
  (gRPC futures / the HTTP client's greenlet pool): the server's dynamic batcher and the
  client's serialisation overlap, and memory stays bounded.  Results are reassembled in
  submission order, so the output row i always belongs to input row i.
- Connection failures (server down, restarting, a dropped connection) are retried with
  exponential backoff inside ``retry_budget_s``; then either one clear error names the
  address and suggests ``--backend local``, or with ``fallback: local`` the scorer logs a
  warning, scores in-process and records the fallback and its reason in provenance.
  Configuration mistakes (unknown model, wrong tensor name or dtype) never fall back:
  they fail at once, because silently scoring elsewhere would hide them.
- Readiness and the served model's configuration are checked once, when the scorer is
  created.  A model exported by qgcal advertises the SHA-256 of its model file; when the
  local metadata is available too, a mismatch is an error (a stale server model would
  otherwise give silently different scores).
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .backends import BaseScorer, as_features, make_local_scorer
from .config import TritonSettings
from .errors import InferenceError, import_optional
from .model_io import ModelMeta, load_model, read_meta

__all__ = ["SHA_PARAMETER", "TritonScorer"]

log = logging.getLogger(__name__)

SHA_PARAMETER = "qgcal_model_sha256"  # model-config parameter carrying the model fingerprint
_RETRYABLE_GRPC = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"}
_RETRYABLE_HTTP = {"502", "503", "504"}


class _Unreachable(Exception):
    """Internal: the retry budget ran out on connection failures."""


class _Backoff:
    """Waits between retries of one outage: 0.05 s, doubling, at most 1 s, within a budget.

    Why one helper: the start-up check and every batch retry must agree on what "within
    ``retry_budget_s``" means (no sleep that would end past the deadline), and a single
    schedule keeps the two from drifting apart.  ``since`` lets a batch retry count the
    budget from when the outage began rather than from its own first failure, so the
    scorer gives up after one budget per outage, not one per batch.  The clock is
    monotonic because wall-clock jumps must neither extend nor cut the budget.
    """

    FIRST_S = 0.05
    MAX_S = 1.0

    def __init__(
        self,
        budget_s: float,
        *,
        since: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self.deadline = (clock() if since is None else since) + budget_s
        self._delay = self.FIRST_S

    def remaining(self) -> float:
        """Time left before the deadline, never below the first delay.

        Why the floor: a last attempt still gets a usable timeout instead of zero.
        """
        return max(self.deadline - self._clock(), self.FIRST_S)

    def wait(self) -> bool:
        """Sleep before the next attempt; False (no sleep) if that would pass the deadline."""
        if self._clock() + self._delay > self.deadline:
            return False
        self._sleep(self._delay)
        self._delay = min(self._delay * 2, self.MAX_S)
        return True


def _connection_problem(exc: BaseException) -> str | None:
    """A short reason when ``exc`` is a (retryable) connection failure, else None."""
    if isinstance(exc, OSError):  # HTTP: refused/reset/timeout sockets
        return f"HTTP {type(exc).__name__}"
    status = getattr(exc, "status", None)
    code = status() if callable(status) else None
    if code in _RETRYABLE_GRPC:
        return f"gRPC {str(code).removeprefix('StatusCode.')}"
    if code is not None and str(code) in _RETRYABLE_HTTP:
        return f"HTTP {code}"
    return None


def _raiser(error: Exception) -> Callable[[], np.ndarray]:
    """A result handle for a request that failed before it was sent."""

    def result() -> np.ndarray:
        raise error

    return result


def _describe(exc: BaseException) -> str:
    msg = getattr(exc, "message", None)
    text = msg() if callable(msg) else str(exc)
    return " ".join(str(text).split())[:300]


class _GrpcTransport:
    def __init__(self, settings: TritonSettings) -> None:
        grpc = import_optional("tritonclient.grpc", "triton", "backend triton (gRPC)")
        self.mod = grpc
        limit = 2**31 - 1
        self.client = grpc.InferenceServerClient(
            settings.url,
            channel_args=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
                # Reconnect quickly so the retry loop, not gRPC's own 1-120 s backoff, decides.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self.settings = settings

    def live(self, timeout: float) -> bool:
        return bool(self.client.is_server_live(client_timeout=timeout))

    def ready(self, timeout: float) -> bool:
        s = self.settings
        return bool(self.client.is_model_ready(s.model_name, s.model_version, client_timeout=timeout))

    def config(self, timeout: float) -> dict[str, Any]:
        s = self.settings
        cfg = self.client.get_model_config(s.model_name, s.model_version, as_json=True, client_timeout=timeout)
        return dict(cfg.get("config", cfg))

    def metadata(self, timeout: float) -> Any:
        s = self.settings
        return self.client.get_model_metadata(s.model_name, s.model_version, client_timeout=timeout)

    def index(self, timeout: float) -> list[dict[str, Any]]:
        return list(self.client.get_model_repository_index(as_json=True, client_timeout=timeout).get("models", []))

    def submit(self, x: np.ndarray) -> Callable[[], np.ndarray]:
        s = self.settings
        inp = self.mod.InferInput(s.input_name, list(x.shape), s.input_dtype)
        inp.set_data_from_numpy(x)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def done(result: Any, error: Any) -> None:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self.client.async_infer(
            s.model_name,
            [inp],
            done,
            model_version=s.model_version,
            outputs=[self.mod.InferRequestedOutput(s.output_name)],
            client_timeout=s.timeout_s,
        )
        return lambda: future.result().as_numpy(s.output_name)

    def close(self) -> None:
        self.client.close()


class _HttpTransport:
    def __init__(self, settings: TritonSettings) -> None:
        http = import_optional("tritonclient.http", "triton", "backend triton (HTTP)")
        self.mod = http
        self.client = http.InferenceServerClient(
            settings.url,
            concurrency=settings.max_in_flight,
            connection_timeout=settings.timeout_s,
            network_timeout=settings.timeout_s,
        )
        self.settings = settings

    def live(self, timeout: float) -> bool:
        return bool(self.client.is_server_live())

    def ready(self, timeout: float) -> bool:
        s = self.settings
        return bool(self.client.is_model_ready(s.model_name, s.model_version))

    def config(self, timeout: float) -> dict[str, Any]:
        s = self.settings
        return dict(self.client.get_model_config(s.model_name, s.model_version))

    def metadata(self, timeout: float) -> Any:
        s = self.settings
        return self.client.get_model_metadata(s.model_name, s.model_version)

    def index(self, timeout: float) -> list[dict[str, Any]]:
        return list(self.client.get_model_repository_index())

    def submit(self, x: np.ndarray) -> Callable[[], np.ndarray]:
        s = self.settings
        inp = self.mod.InferInput(s.input_name, list(x.shape), s.input_dtype)
        inp.set_data_from_numpy(x, binary_data=True)
        request = self.client.async_infer(
            s.model_name,
            [inp],
            model_version=s.model_version,
            outputs=[self.mod.InferRequestedOutput(s.output_name, binary_data=True)],
        )
        return lambda: request.get_result().as_numpy(s.output_name)

    def close(self) -> None:
        self.client.close()


class TritonScorer(BaseScorer):
    """Scores through a Triton server; see the module docstring for the behaviour."""

    def __init__(
        self,
        settings: TritonSettings,
        *,
        model_path: str | Path | None = None,
        local_device: str = "cpu",
    ) -> None:
        self.settings = settings
        self.model_path = Path(model_path) if model_path is not None else None
        self._local_device = local_device
        self._where = f"Triton server at {settings.url}"
        self._local: BaseScorer | None = None
        self._fallback_reason: str | None = None
        self._outage_since: float | None = None
        self._n_requests = 0
        self._served: dict[str, Any] = {}
        self._transport: _GrpcTransport | _HttpTransport | None = None
        if settings.fallback == "local" and self.model_path is None:
            raise InferenceError(
                "triton.fallback is local but no local model path was given for "
                f"{settings.model_name!r}; "
                "set the tagger's model path or use fallback: none"
            )
        # Local metadata (cheap, no model load) tells the expected feature count and fingerprint.
        self._meta: ModelMeta | None = read_meta(self.model_path) if self.model_path else None
        utils = import_optional("tritonclient.utils", "triton", "backend triton")
        self._client_errors: tuple[type[Exception], ...] = (utils.InferenceServerException, OSError)
        self._np_in = self._np_dtype(settings.input_dtype)
        self._np_out = self._np_dtype(settings.output_dtype)
        transport_cls = _GrpcTransport if settings.protocol == "grpc" else _HttpTransport
        self._transport = transport_cls(settings)
        try:
            try:
                self._check_ready()
            except _Unreachable as exc:
                self._fall_back_or_raise(str(exc))
        except BaseException:
            self._close_transport()  # no half-made scorer keeps a channel open
            raise

    @staticmethod
    def _np_dtype(name: str) -> np.dtype[Any]:
        utils = import_optional("tritonclient.utils", "triton", "backend triton")
        return np.dtype(utils.triton_to_np_dtype(name))

    # --- start-up -----------------------------------------------------------------------
    def _model_label(self) -> str:
        s = self.settings
        return f"model {s.model_name!r}" + (f" version {s.model_version}" if s.model_version else "")

    def _check_ready(self) -> None:
        """Wait (within the retry budget) for the server and model, then check the layout."""
        assert self._transport is not None
        s = self.settings
        backoff, reason = _Backoff(s.retry_budget_s), "no attempt made"
        while True:
            timeout = min(s.timeout_s, backoff.remaining())
            try:
                if self._transport.live(timeout) and self._transport.ready(timeout):
                    break
                reason = self._not_ready_reason(timeout)
            except InferenceError:
                raise
            except Exception as exc:
                problem = _connection_problem(exc)
                if problem is None:
                    raise InferenceError(
                        f"{self._where} refused the readiness check for {self._model_label()}: {_describe(exc)}"
                    ) from exc
                reason = problem
            if not backoff.wait():
                if reason.startswith("model state"):
                    raise InferenceError(
                        f"{self._model_label()} on {self._where} is not ready after "
                        f"{s.retry_budget_s:g} s ({reason}); check the server log"
                    )
                raise _Unreachable(f"{self._where} unreachable after {s.retry_budget_s:g} s ({reason})")
        self._check_layout(min(s.timeout_s, 10.0))

    def _not_ready_reason(self, timeout: float) -> str:
        """Model not ready: an unknown model fails now, a known one (loading) is waited for."""
        assert self._transport is not None
        try:
            self._transport.metadata(timeout)
        except Exception as exc:
            if _connection_problem(exc) is not None:
                raise
            known = self._available_models(timeout)
            listing = f" (models there: {', '.join(known) or 'none'})" if known is not None else ""
            raise InferenceError(
                f"{self._model_label()} not found on {self._where}{listing}: {_describe(exc)}; "
                "fix triton.model_name/model_version in the config or serve that model"
            ) from exc
        return "model state: known to the server but not ready"

    def _available_models(self, timeout: float) -> list[str] | None:
        """Best effort: pytriton restricts the repository index, other servers allow it."""
        assert self._transport is not None
        try:
            return sorted({str(m.get("name")) for m in self._transport.index(timeout)})
        except self._client_errors:
            return None

    def _check_layout(self, timeout: float) -> None:
        """Compare the served config with the settings; record what the server serves."""
        assert self._transport is not None
        s = self.settings
        try:
            cfg = self._transport.config(timeout)
        except self._client_errors as exc:  # may be restricted; layout errors then show at infer
            log.debug("could not read model config from %s: %s", self._where, exc)
            return
        inputs = {i.get("name"): i for i in cfg.get("input", [])}
        outputs = {o.get("name"): o for o in cfg.get("output", [])}
        problems = []
        if s.input_name not in inputs:
            problems.append(f"no input {s.input_name!r} (inputs: {', '.join(map(str, inputs))})")
        elif inputs[s.input_name].get("data_type") != f"TYPE_{s.input_dtype}":
            problems.append(
                f"input {s.input_name} is {inputs[s.input_name].get('data_type')}, config says {s.input_dtype}"
            )
        if s.output_name not in outputs:
            problems.append(f"no output {s.output_name!r} (outputs: {', '.join(map(str, outputs))})")
        elif outputs[s.output_name].get("data_type") != f"TYPE_{s.output_dtype}":
            problems.append(
                f"output {s.output_name} is {outputs[s.output_name].get('data_type')}, config says {s.output_dtype}"
            )
        max_batch = int(cfg.get("max_batch_size", 0) or 0)
        if max_batch and s.batch_size > max_batch:
            problems.append(f"batch_size {s.batch_size} exceeds the model's max_batch_size {max_batch}")
        if problems:
            raise InferenceError(
                f"{self._model_label()} on {self._where} does not match the config: {'; '.join(problems)}"
            )
        params = cfg.get("parameters", {}) or {}
        served_sha = (params.get(SHA_PARAMETER) or {}).get("string_value") or None
        self._served = {"max_batch_size": max_batch, "model_sha256": served_sha}
        if served_sha and self._meta and served_sha != self._meta.model_sha256:
            raise InferenceError(
                f"{self._model_label()} on {self._where} serves model sha256 {served_sha[:12]} "
                f"but the configured model {self.model_path} is {self._meta.model_sha256[:12]}; "
                "restart the server with the current model or point the tagger at the served one"
            )

    # --- fallback -----------------------------------------------------------------------
    def _fall_back_or_raise(self, reason: str) -> None:
        if self.settings.fallback != "local":
            raise InferenceError(f"{reason}; start it with `qgcal serve --config C` or rerun with --backend local")
        assert self.model_path is not None
        log.warning("%s; falling back to local scoring with %s (fallback: local)", reason, self.model_path)
        self._fallback_reason = reason
        self._local = make_local_scorer(load_model(self.model_path), self._local_device)
        self._close_transport()

    # --- scoring ------------------------------------------------------------------------
    def predict(self, features: np.ndarray) -> np.ndarray:
        n_features = len(self._meta.features) if self._meta else None
        x = as_features(features, n_features, f"{self._model_label()} on {self._where}")
        if self._local is not None:
            return self._local.predict(x)
        try:
            return self._predict_remote(x.astype(self._np_in, copy=False))
        except _Unreachable as exc:
            self._fall_back_or_raise(str(exc))
            assert self._local is not None
            return self._local.predict(x)

    def _predict_remote(self, x: np.ndarray) -> np.ndarray:
        size = self.settings.batch_size
        starts = range(0, x.shape[0], size)  # empty input -> no request at all
        pending: deque[tuple[int, Callable[[], np.ndarray]]] = deque()
        parts: list[np.ndarray] = []
        for start in starts:
            if len(pending) >= self.settings.max_in_flight:
                parts.append(self._collect(x, *pending.popleft()))
            pending.append((start, self._submit(x[start : start + size])))
        while pending:
            parts.append(self._collect(x, *pending.popleft()))
        if not parts:
            return np.empty(0, dtype=self._np_out)
        return np.concatenate(parts)

    def _submit(self, batch: np.ndarray) -> Callable[[], np.ndarray]:
        assert self._transport is not None
        try:
            return self._transport.submit(batch)
        except Exception as exc:  # noqa: BLE001 - re-raised by _collect, which classifies it
            return _raiser(exc)

    def _collect(self, x: np.ndarray, start: int, result: Callable[[], np.ndarray]) -> np.ndarray:
        """Wait for one batch; on connection failure resubmit it until the budget is spent."""
        batch = x[start : start + self.settings.batch_size]
        backoff: _Backoff | None = None
        while True:
            try:
                out = result()
                self._outage_since = None
                self._n_requests += 1
                return self._check_output(out, batch.shape[0])
            except InferenceError:
                raise
            except Exception as exc:
                problem = _connection_problem(exc)
                if problem is None:
                    raise InferenceError(
                        f"{self._model_label()} on {self._where} rejected a request of "
                        f"{batch.shape[0]} rows: {_describe(exc)}"
                    ) from exc
                budget = self.settings.retry_budget_s
                if backoff is None:
                    self._outage_since = self._outage_since or time.monotonic()
                    backoff = _Backoff(budget, since=self._outage_since)
                if not backoff.wait():
                    raise _Unreachable(f"{self._where} unreachable after {budget:g} s ({problem})") from exc
                result = self._submit(batch)

    def _check_output(self, out: np.ndarray | None, rows: int) -> np.ndarray:
        s = self.settings
        if out is None:
            raise InferenceError(f"{self._model_label()} on {self._where} returned no output {s.output_name!r}")
        if out.ndim == 2 and out.shape[1] == 1:  # [n, 1] per-row scalar -> [n]
            out = out[:, 0]
        if out.shape[:1] != (rows,) or out.dtype != self._np_out:
            raise InferenceError(
                f"{self._model_label()} on {self._where} returned "
                f"{s.output_name} {out.dtype}{list(out.shape)} "
                f"for {rows} rows; config expects {s.output_dtype} [{rows}]"
            )
        return out

    # --- bookkeeping --------------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        s = self.settings
        fell_back = self._fallback_reason is not None
        record: dict[str, Any] = {
            "backend": "local" if fell_back else "triton",
            "engine": "triton",
            "device": "remote",
            "requested": {"backend": "triton", "device": self._local_device},
            "device_note": None,
            "model": {
                "path": str(self.model_path) if self.model_path else None,
                "sha256": self._meta.model_sha256 if self._meta else None,
                "features": list(self._meta.features) if self._meta else None,
                "score": self._meta.score if self._meta else None,
            },
            "triton": {
                "url": s.url,
                "protocol": s.protocol,
                "model_name": s.model_name,
                "model_version": s.model_version,
                "served_model_sha256": self._served.get("model_sha256"),
                "requests": self._n_requests,
            },
            "fallback": {"happened": fell_back, "reason": self._fallback_reason},
            "versions": {"numpy": np.__version__},
        }
        if self._local is not None:
            local = self._local.provenance()
            record["engine"], record["device"] = local["engine"], local["device"]
            record["versions"].update(local["versions"])
        return record

    def _close_transport(self) -> None:
        if self._transport is not None:
            try:
                self._transport.close()
            finally:
                self._transport = None

    def close(self) -> None:
        self._close_transport()
        if self._local is not None:
            self._local.close()
