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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends import BaseScorer, as_features, make_local_scorer
from .config import TritonSettings
from .errors import InferenceError, import_optional
from .model_io import ModelMeta, load_model, read_meta

__all__ = [
    "CONSTITUENTS_INPUT",
    "COUNTS_INPUT",
    "DEVICE_PARAMETER",
    "EMPTY_SENTINEL_ROWS",
    "SHA_PARAMETER",
    "Fingerprint",
    "TritonConstituentScorer",
    "TritonScorer",
    "constituent_model_name",
    "jet_requests",
]

log = logging.getLogger(__name__)

SHA_PARAMETER = "qgcal_model_sha256"  # model-config parameter carrying the model fingerprint
DEVICE_PARAMETER = "qgcal_device"  # model-config parameter: where the server scores (cpu, cuda:0)
#: the constituent model's tensors: flattened constituents, per-jet counts (no padding on the wire)
CONSTITUENTS_INPUT, COUNTS_INPUT = "CONSTITUENTS", "COUNTS"
CONSTITUENTS_DTYPE, COUNTS_DTYPE = "FP32", "INT64"
#: a request whose jets have no constituent at all carries this many zero rows, which the
#: server drops (pytriton cannot pass a zero-size tensor to the model; only then, see jet_requests)
EMPTY_SENTINEL_ROWS = 1
_RETRYABLE_GRPC = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"}
_RETRYABLE_HTTP = {"502", "503", "504"}


_Request = list[tuple[str, np.ndarray, str]]  # one request: (input name, array, Triton dtype) per input


@dataclass(frozen=True)
class Fingerprint:
    """What the client checks a served model against (the part of a model's metadata it needs)."""

    features: list[str]
    model_sha256: str
    score: str


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


#: what a server says about a model it is still (re)loading; see _reloading_problem
_RELOADING = ("has no available versions", "is not ready", "unknown model")


def _reloading_problem(exc: BaseException) -> str | None:
    """A model that was ready when the scorer started but is unknown / not ready now.

    Why retried (mid-run only): a server restarted under a running job listens before its
    model is loaded again, and answers "unknown model ... has no available versions" in
    that window.  At start-up the same answer is a configuration error and fails at once
    (``_check_ready``); once the model has been seen ready, it is an outage like any other.
    """
    text = _describe(exc)
    return f"model reloading: {text[:80]}" if any(m in text for m in _RELOADING) else None


def _raiser(error: Exception) -> Callable[[], np.ndarray]:
    """A result handle for a request that failed before it was sent."""

    def result() -> np.ndarray:
        raise error

    return result


def _describe(exc: BaseException) -> str:
    msg = getattr(exc, "message", None)
    text = msg() if callable(msg) else str(exc)
    return " ".join(str(text).split())[:300]


def _infer_inputs(mod: Any, arrays: list[tuple[str, np.ndarray, str]], **data_kw: Any) -> list[Any]:
    """The client module's InferInput objects for (name, array, Triton dtype) triples (gRPC or HTTP)."""
    inputs = []
    for name, x, dtype in arrays:
        inp = mod.InferInput(name, list(x.shape), dtype)
        inp.set_data_from_numpy(x, **data_kw)
        inputs.append(inp)
    return inputs


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

    def submit_inputs(self, arrays: list[tuple[str, np.ndarray, str]]) -> Callable[[], np.ndarray]:
        """One request with several named inputs (name, array, Triton dtype); returns the output's getter."""
        s = self.settings
        inputs = _infer_inputs(self.mod, arrays)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def done(result: Any, error: Any) -> None:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self.client.async_infer(
            s.model_name,
            inputs,
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

    def submit_inputs(self, arrays: list[tuple[str, np.ndarray, str]]) -> Callable[[], np.ndarray]:
        s = self.settings
        inputs = _infer_inputs(self.mod, arrays, binary_data=True)
        request = self.client.async_infer(
            s.model_name,
            inputs,
            model_version=s.model_version,
            outputs=[self.mod.InferRequestedOutput(s.output_name, binary_data=True)],
        )
        return lambda: request.get_result().as_numpy(s.output_name)

    def close(self) -> None:
        self.client.close()


class TritonScorer(BaseScorer):
    """Scores through a Triton server; see the module docstring for the behaviour."""

    #: the served batch dimension counts rows (jets), so batch_size must fit max_batch_size
    _batch_dim_is_rows = True

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
        #: requests resubmitted after a connection failure (not in provenance: it varies run to run)
        self.retries = 0
        self._served: dict[str, Any] = {}
        self._transport: _GrpcTransport | _HttpTransport | None = None
        if settings.fallback == "local" and self.model_path is None:
            raise InferenceError(
                "triton.fallback is local but no local model path was given for "
                f"{settings.model_name!r}; "
                "set the tagger's model path or use fallback: none"
            )
        # Local metadata (cheap, no model load) tells the expected feature count and fingerprint.
        self._meta: ModelMeta | Fingerprint | None = self._read_meta() if self.model_path else None
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

    def _read_meta(self) -> ModelMeta | Fingerprint:
        assert self.model_path is not None
        return read_meta(self.model_path)

    def _expected_inputs(self) -> list[tuple[str, str]]:
        """(name, Triton dtype) of every input the served model must have."""
        return [(self.settings.input_name, self.settings.input_dtype)]

    def _make_fallback(self) -> BaseScorer:
        assert self.model_path is not None
        return make_local_scorer(load_model(self.model_path), self._local_device)

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
        for name, dtype in self._expected_inputs():
            if name not in inputs:
                problems.append(f"no input {name!r} (inputs: {', '.join(map(str, inputs))})")
            elif inputs[name].get("data_type") != f"TYPE_{dtype}":
                problems.append(f"input {name} is {inputs[name].get('data_type')}, config says {dtype}")
        if s.output_name not in outputs:
            problems.append(f"no output {s.output_name!r} (outputs: {', '.join(map(str, outputs))})")
        elif outputs[s.output_name].get("data_type") != f"TYPE_{s.output_dtype}":
            problems.append(
                f"output {s.output_name} is {outputs[s.output_name].get('data_type')}, config says {s.output_dtype}"
            )
        max_batch = int(cfg.get("max_batch_size", 0) or 0)
        if max_batch and s.batch_size > max_batch and self._batch_dim_is_rows:
            problems.append(f"batch_size {s.batch_size} exceeds the model's max_batch_size {max_batch}")
        if problems:
            raise InferenceError(
                f"{self._model_label()} on {self._where} does not match the config: {'; '.join(problems)}"
            )
        params = cfg.get("parameters", {}) or {}
        served_sha = (params.get(SHA_PARAMETER) or {}).get("string_value") or None
        served_device = (params.get(DEVICE_PARAMETER) or {}).get("string_value") or None
        self._served = {"max_batch_size": max_batch, "model_sha256": served_sha, "device": served_device}
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
        self._local = self._make_fallback()
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
        s = self.settings
        size = s.batch_size
        requests: list[_Request] = [
            [(s.input_name, x[i : i + size], str(s.input_dtype))] for i in range(0, x.shape[0], size)
        ]
        return self._run_requests(requests, [len(r[0][1]) for r in requests])

    def _run_requests(self, requests: list[_Request], rows: list[int]) -> np.ndarray:
        """Send ``requests`` (each a list of named inputs) with at most ``max_in_flight`` outstanding.

        Results come back in submission order, one ``[rows[i]]`` output per request; an empty
        list sends nothing.
        """
        pending: deque[tuple[int, Callable[[], np.ndarray]]] = deque()
        parts: list[np.ndarray] = []
        for i, request in enumerate(requests):
            if len(pending) >= self.settings.max_in_flight:
                j, handle = pending.popleft()
                parts.append(self._collect(requests[j], rows[j], handle))
            pending.append((i, self._submit(request)))
        while pending:
            j, handle = pending.popleft()
            parts.append(self._collect(requests[j], rows[j], handle))
        if not parts:
            return np.empty(0, dtype=self._np_out)
        return np.concatenate(parts)

    def _submit(self, request: _Request) -> Callable[[], np.ndarray]:
        assert self._transport is not None
        try:
            return self._transport.submit_inputs(request)
        except Exception as exc:  # noqa: BLE001 - re-raised by _collect, which classifies it
            return _raiser(exc)

    def _collect(self, request: _Request, rows: int, result: Callable[[], np.ndarray]) -> np.ndarray:
        """Wait for one request; on connection failure resubmit it until the budget is spent."""
        backoff: _Backoff | None = None
        while True:
            try:
                out = result()
                self._outage_since = None
                self._n_requests += 1
                return self._check_output(out, rows)
            except InferenceError:
                raise
            except Exception as exc:
                problem = _connection_problem(exc) or _reloading_problem(exc)
                if problem is None:
                    raise InferenceError(
                        f"{self._model_label()} on {self._where} rejected a request of {rows} rows: {_describe(exc)}"
                    ) from exc
                budget = self.settings.retry_budget_s
                if backoff is None:
                    self._outage_since = self._outage_since or time.monotonic()
                    backoff = _Backoff(budget, since=self._outage_since)
                if not backoff.wait():
                    raise _Unreachable(f"{self._where} unreachable after {budget:g} s ({problem})") from exc
                self.retries += 1
                result = self._submit(request)

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


def constituent_model_name(base: str, tagger: str) -> str:
    """Triton model name of a constituent tagger: ``<triton.model_name>_<tagger>``.

    Why not ``triton.model_name`` itself: one server may hold the BDT (under that name) and
    constituent models side by side; ``qgcal serve`` and pass 2 both use this rule.
    """
    return f"{base}_{tagger}"


def jet_requests(counts: np.ndarray, jets_per_request: int) -> list[tuple[int, int, int, int]]:
    """(first jet, end jet, first constituent, end constituent) of each request.

    Requests hold whole jets only (at most ``jets_per_request`` of them): a jet's constituents
    never straddle two requests, so each request is a valid (values, counts) pair on its own.
    A request that would carry no constituent at all (only empty jets) joins its neighbour
    (the one before, or after for leading ones): pytriton cannot pass a zero-size tensor to
    the model; only when the whole call has no constituent does one such request remain (see
    :data:`EMPTY_SENTINEL_ROWS`).
    """
    ends = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    spans: list[tuple[int, int, int, int]] = []
    for lo in range(0, len(counts), jets_per_request):
        hi = min(lo + jets_per_request, len(counts))
        v0, v1 = int(ends[lo]), int(ends[hi])
        if spans and (v0 == v1 or spans[-1][2] == spans[-1][3]):
            j0, _, w0, _ = spans.pop()  # an empty request before, or this one empty: merge
            spans.append((j0, hi, w0, v1))
        else:
            spans.append((lo, hi, v0, v1))
    return spans


class TritonConstituentScorer(TritonScorer):
    """Scores a constituent model on a Triton server: two inputs, one output per jet.

    Each request carries ``CONSTITUENTS`` float32 ``[N, k]`` (the flattened constituents of
    its jets) and ``COUNTS`` int64 ``[n]``, and returns ``SCORE`` float32 ``[n]``; requests
    hold at most ``triton.batch_size`` whole jets (:func:`jet_requests`), with the same
    bounded in-flight window and connection retries as :class:`TritonScorer`.  The server
    scores each request on its own (no server-side batching, see docs/triton.md), so a
    request equal to the local route's batch gives bit-identical scores.  A server started
    with ``--dynamic-batching on`` serves the model with a batch dimension of one *request*
    (``max_batch_size`` > 0): each request then goes as ``[1, N, k]`` + ``[1, n]`` and comes
    back as ``[1, n]``, and the server may merge queued requests into one forward pass.
    """

    _batch_dim_is_rows = False  # a batched constituent model's batch dimension counts requests
    _engine = "torch"  # refined from the model's sidecar by _read_meta (no model file: unknown architecture)

    def _read_meta(self) -> Fingerprint:
        from .constituent_model import read_constituent_meta

        assert self.model_path is not None
        if not self.model_path.is_file():
            raise InferenceError(
                f"{self.model_path}: constituent model not found; run 'qgcal train --config <config>' first"
            )
        meta = read_constituent_meta(self.model_path)
        self._engine = meta.engine  # torch-deepsets | torch-knn: what the server runs for this fingerprint
        return Fingerprint(features=list(meta.features), model_sha256=meta.weights_sha256, score="gluon log-odds")

    def _expected_inputs(self) -> list[tuple[str, str]]:
        return [(CONSTITUENTS_INPUT, CONSTITUENTS_DTYPE), (COUNTS_INPUT, COUNTS_DTYPE)]

    def _make_fallback(self) -> BaseScorer:
        from .constituent_model import ConstituentScorer

        assert self.model_path is not None
        return ConstituentScorer(self.model_path, requested={"backend": "triton", "device": self._local_device})

    def predict(self, features: np.ndarray) -> np.ndarray:
        raise InferenceError(f"{self._model_label()} scores constituents: call predict_constituents(values, counts)")

    def predict_constituents(self, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Scores of ``len(counts)`` jets; ``values`` is ``[sum(counts), k]`` in jet order."""
        x = np.ascontiguousarray(values, dtype=np.float32)
        c = np.ascontiguousarray(counts, dtype=np.int64)
        k = len(self._meta.features) if self._meta else (x.shape[1] if x.ndim == 2 else -1)
        if x.ndim != 2 or x.shape[1] != k or c.ndim != 1 or int(c.sum()) != x.shape[0] or (c < 0).any():
            raise InferenceError(
                f"{self._model_label()} on {self._where} expects constituents [sum(counts), {k}] and counts [n] "
                f">= 0, got {list(x.shape)} and {list(c.shape)}; check the tagger's features"
            )
        if self._local is not None:
            return self._local_constituents(x, c)
        spans = jet_requests(c, self.settings.batch_size)
        sentinel = np.zeros((EMPTY_SENTINEL_ROWS, x.shape[1]), dtype=np.float32)
        lead: tuple[int, ...] = (1,) if self._served.get("max_batch_size") else ()  # one request per batch row
        requests: list[_Request] = [
            [
                (CONSTITUENTS_INPUT, (x[v0:v1] if v1 > v0 else sentinel).reshape(*lead, -1, k), CONSTITUENTS_DTYPE),
                (COUNTS_INPUT, c[j0:j1].reshape(*lead, -1), COUNTS_DTYPE),
            ]
            for j0, j1, v0, v1 in spans
        ]
        try:
            return self._run_requests(requests, [j1 - j0 for j0, j1, _, _ in spans])
        except _Unreachable as exc:
            self._fall_back_or_raise(str(exc))
            return self._local_constituents(x, c)

    def _check_output(self, out: np.ndarray | None, rows: int) -> np.ndarray:
        if out is not None and self._served.get("max_batch_size") and out.ndim == 2 and out.shape[0] == 1:
            out = out[0]  # [1, n]: one request's row of a batched model
        return super()._check_output(out, rows)

    def _local_constituents(self, x: np.ndarray, c: np.ndarray) -> np.ndarray:
        local: Any = self._local  # a ConstituentScorer (see _make_fallback)
        return np.asarray(local.predict_constituents(x, c), dtype=np.float32)

    def provenance(self) -> dict[str, Any]:
        record = super().provenance()
        record["triton"]["served_device"] = self._served.get("device")
        # a server started with --dynamic-batching on may merge requests (scores within 2e-4, not bit-identical)
        record["triton"]["server_merges_requests"] = bool(self._served.get("max_batch_size"))
        record["triton"]["inputs"] = f"{CONSTITUENTS_INPUT} FP32 [N, k] + {COUNTS_INPUT} INT64 [n], no padding"
        if self._fallback_reason is None:
            record["engine"] = f"triton:{self._engine}"
            record["device"] = f"remote:{self._served.get('device') or 'unknown'}"
        else:
            record["versions"]["torch"] = self._local.provenance()["versions"]["torch"] if self._local else None
        return record
