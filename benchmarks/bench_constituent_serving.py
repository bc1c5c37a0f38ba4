"""Serving the constituent tagger: wire layout, request size, fused vs split, local vs Triton.

    python benchmarks/bench_constituent_serving.py [--jets 300000] [--repeats 3] [--hidden 32]

Builds a DeepSets constituent model (seeded weights; timing does not depend on training) and
jets with Poisson(18)+1 constituents x 6 features, starts one real Triton server (pytriton,
a subprocess on free loopback ports) with four models, all without server-side batching
(docs/triton.md):

* ``fused``: the model ``qgcal serve`` binds (``CONSTITUENTS [N, k]`` + ``COUNTS [n]`` ->
  ``SCORE [n]``), called through ``TritonConstituentScorer``;
* ``embed`` + ``pool``: the same network split in two (per-constituent phi, then pooling and
  the per-jet rho): two round trips, the embedding ``[N, H]`` crossing the wire twice;
* ``padded``: ``PADDED [n, max_count, k]`` + ``COUNTS`` (the padding-to-max layout; the
  server unpads and scores like ``fused``).

and prints markdown tables: request bytes and time per layout, jets per request (1 vs many),
fused vs split, local vs Triton at 100k jets per request, best of ``--repeats``, each score
checked against the local route.  Client and server share this machine's cores.

    python benchmarks/bench_constituent_serving.py --matrix [--clients 1,2,4,8] [--client-jets 20000]

Many clients, one server: for each server setting {dynamic batching off, on} x {1, 2 model
instances} it starts ``python -m qgcal.inference.serve`` (what ``qgcal serve`` runs) once,
drives it from 1, 2, 4 and 8 concurrent client processes (``TritonConstituentScorer``, one
request per call, default in-flight window and retry budget) and prints aggregate jets/s,
p50/p99 request latency, failed requests and retries, next to the same clients scoring
locally; every client's scores are checked against its local scores (2e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

K = 6
FEATURES = [f"f{i}" for i in range(K)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- server side


def _serve(model: str, grpc_port: int, http_port: int, ready_file: str) -> int:
    """The benchmark's server: the four models on one pytriton server (subprocess mode)."""
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton

    from qgcal.inference.constituent_model import deterministic_torch, load_constituent_model
    from qgcal.inference.serve import _constituent_binding, _stub_environment, loopback_config

    net, meta = load_constituent_model(model)
    hidden = meta.hidden
    fused, _ = _constituent_binding(model, "SCORE")

    def embed(requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        out = []
        for r in requests:
            with deterministic_torch(1) as torch, torch.no_grad():
                x = torch.from_numpy(np.ascontiguousarray(r["CONSTITUENTS"], dtype=np.float32))
                h = net.phi((x - net.mean) * net.scale)
            out.append({"EMBED": h.numpy()})
        return out

    def pool(requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        out = []
        for r in requests:
            with deterministic_torch(1) as torch, torch.no_grad():
                h = torch.from_numpy(np.ascontiguousarray(r["EMBED"], dtype=np.float32))
                c = torch.from_numpy(np.ascontiguousarray(r["COUNTS"], dtype=np.int64))
                n = c.shape[0]
                jet = torch.repeat_interleave(torch.arange(n), c)
                pooled = torch.zeros((n, h.shape[1]), dtype=h.dtype).index_add_(0, jet, h)
                cc = c.to(h.dtype).unsqueeze(1)
                feats = torch.cat([pooled / net.sum_scale, pooled / cc.clamp(min=1.0), torch.log1p(cc)], dim=1)
                out.append({"SCORE": net.rho(feats).squeeze(1).numpy()})
        return out

    fused_infer = fused["infer_func"]

    def padded(requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        unpadded = []
        for r in requests:
            p, c = r["PADDED"], r["COUNTS"].astype(np.int64)
            mask = np.arange(p.shape[1])[None, :] < c[:, None]
            unpadded.append({"CONSTITUENTS": p[mask], "COUNTS": c})
        return list(fused_infer(unpadded))

    cfg = loopback_config(http_port, grpc_port)
    nb = ModelConfig(batching=False)
    work = Path(tempfile.mkdtemp(prefix="qgb", dir="/tmp"))
    with _stub_environment(), Triton(config=cfg, workspace=work / "w") as triton:
        triton.bind(model_name="fused", strict=True, **fused)
        triton.bind(
            model_name="embed",
            infer_func=embed,
            inputs=[Tensor(name="CONSTITUENTS", dtype=np.float32, shape=(-1, K))],
            outputs=[Tensor(name="EMBED", dtype=np.float32, shape=(-1, hidden))],
            config=nb,
            strict=True,
        )
        triton.bind(
            model_name="pool",
            infer_func=pool,
            inputs=[
                Tensor(name="EMBED", dtype=np.float32, shape=(-1, hidden)),
                Tensor(name="COUNTS", dtype=np.int64, shape=(-1,)),
            ],
            outputs=[Tensor(name="SCORE", dtype=np.float32, shape=(-1,))],
            config=nb,
            strict=True,
        )
        triton.bind(
            model_name="padded",
            infer_func=padded,
            inputs=[
                Tensor(name="PADDED", dtype=np.float32, shape=(-1, -1, K)),
                Tensor(name="COUNTS", dtype=np.int64, shape=(-1,)),
            ],
            outputs=[Tensor(name="SCORE", dtype=np.float32, shape=(-1,))],
            config=nb,
            strict=True,
        )
        triton.run()
        Path(ready_file).write_text("ready")
        stop = {"flag": False}
        signal.signal(signal.SIGINT, lambda *a: stop.update(flag=True))
        signal.signal(signal.SIGTERM, lambda *a: stop.update(flag=True))
        while not stop["flag"]:
            time.sleep(0.2)
    return 0


# ----------------------------------------------------------------------------- client side


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _infer(client: Any, grpc: Any, model: str, arrays: list[tuple[str, np.ndarray, str]], output: str) -> np.ndarray:
    inputs = []
    for name, a, dtype in arrays:
        i = grpc.InferInput(name, list(a.shape), dtype)
        i.set_data_from_numpy(a)
        inputs.append(i)
    return np.asarray(client.infer(model, inputs, outputs=[grpc.InferRequestedOutput(output)]).as_numpy(output))


def _client(args: tuple[str, str, str, int, int, int, str, Any]) -> dict[str, Any]:
    """One client process: score its own jets request by request.

    All clients start together (a barrier after their warm-up), so the aggregate rate is
    total jets / (last end - first start) over truly concurrent clients.  A request that
    fails is counted, not fatal (the point is to show that none does); retries are the
    scorer's resubmissions after connection failures.  The scores are checked against local
    scoring of the same jets after the timed part.
    """
    url, model, model_name, seed, jets, per_request, route, barrier = args
    from qgcal.inference import InferenceError, TritonSettings
    from qgcal.inference.constituent_model import ConstituentScorer
    from qgcal.inference.triton_client import TritonConstituentScorer, jet_requests

    rng = np.random.default_rng(seed)
    counts = (rng.poisson(18, size=jets) + 1).astype(np.int64)
    values = rng.normal(size=(int(counts.sum()), K)).astype(np.float32)
    local = ConstituentScorer(model)
    if route == "local":
        scorer: Any = local
    else:
        settings = TritonSettings(url=url, model_name=model_name, batch_size=per_request, retry_budget_s=60.0)
        scorer = TritonConstituentScorer(settings, model_path=model)
    spans = jet_requests(counts, per_request)
    j0, j1, v0, v1 = spans[0]
    scorer.predict_constituents(values[v0:v1], counts[j0:j1])  # warm-up (torch start-up, connection), not timed
    latencies, parts, failures = [], [], 0
    barrier.wait()
    t0 = time.time()
    for j0, j1, v0, v1 in spans:
        t = time.perf_counter()
        try:
            parts.append(scorer.predict_constituents(values[v0:v1], counts[j0:j1]))
        except InferenceError:
            failures += 1
            parts.append(np.full(j1 - j0, np.nan, np.float32))
        latencies.append(time.perf_counter() - t)
    end = time.time()
    retries = int(getattr(scorer, "retries", 0))
    scorer.close()
    got = np.concatenate(parts)
    ok = (
        failures > 0
        or route == "local"
        or bool(np.max(np.abs(got - local.predict_constituents(values, counts))) < 2e-4)
    )
    return {"start": t0, "end": end, "latencies": latencies, "jets": jets, "failures": failures,
            "retries": retries, "scores_ok": ok}  # fmt: skip


def _many_clients(
    url: str,
    model: Path,
    n: int,
    jets: int,
    per_request: int,
    route: str,
    model_name: str = "fused",
    workers: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Aggregate jets/s, p50/p99 request latency, failures and retries of ``n`` concurrent client processes.

    ``workers``: a (spawn Pool of at least ``n`` processes, Manager) pair to reuse, so that the
    clients' start-up (torch, tritonclient imports) is paid once per benchmark, not per row.
    """
    import contextlib
    import multiprocessing

    with contextlib.ExitStack() as stack:
        if workers is None:
            ctx = multiprocessing.get_context("spawn")
            manager = stack.enter_context(ctx.Manager())
            pool = stack.enter_context(ctx.Pool(n))
        else:
            pool, manager = workers
        barrier = manager.Barrier(n)
        work = [(url, str(model), model_name, 100 + i, jets, per_request, route, barrier) for i in range(n)]
        results = pool.map(_client, work, chunksize=1)  # one task per worker: each waits at the barrier
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    lat = np.concatenate([r["latencies"] for r in results]) * 1e3
    return {
        "clients": n,
        "route": route,
        "jets_per_s": sum(r["jets"] for r in results) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "requests": int(lat.size),
        "failures": sum(r["failures"] for r in results),
        "retries": sum(r["retries"] for r in results),
        "scores_ok": all(r["scores_ok"] for r in results),
    }


def _print_many(rows: list[dict[str, Any]], header: bool) -> None:
    if header:
        print(
            "| clients | route | aggregate jets/s | p50 latency (ms) | p99 latency (ms) | requests | failed | retries |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['route']} | {r['jets_per_s']:,.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
              f"{r['requests']} | {r['failures']} | {r['retries']} |", flush=True)  # fmt: skip


def _start_qgcal_serve(model: Path, work: Path, batching: str, instances: int) -> tuple[Any, str, Any]:
    """``python -m qgcal.inference.serve`` (what ``qgcal serve`` runs) in its own session; (process, url, log)."""
    grpc_port, http_port = _free_port(), _free_port()
    ready = work / f"ready-{batching}-{instances}"
    log_path = work / f"serve-{batching}-{instances}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed by _stop_server
    argv = [
        *[sys.executable, "-m", "qgcal.inference.serve", str(model), "--model-name", "cons"],
        *["--grpc-port", str(grpc_port), "--http-port", str(http_port), "--ready-file", str(ready)],
        *["--dynamic-batching", batching, "--instances", str(instances), "--workspace", "/tmp"],
    ]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"qgcal serve did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc, f"127.0.0.1:{grpc_port}", log


def _stop_server(proc: Any, log: Any) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()
    text = Path(log.name).read_text(errors="replace")
    found = [line for line in text.splitlines() if "forward passes" in line]
    return found[-1].split(" INFO ")[-1] if found else "no forward count logged"


def _matrix(args: argparse.Namespace) -> int:
    """The many-clients table for {batching off, on} x {1, 2 instances} x clients, plus local clients."""
    import multiprocessing

    import torch

    from qgcal.inference.constituent_model import build_network, save_constituent_model

    work = Path(tempfile.mkdtemp(prefix="qgcm"))
    torch.manual_seed(0)
    model = work / "cons.safetensors"
    save_constituent_model(
        build_network(K, args.hidden), model, features=FEATURES, hidden=args.hidden,
        training_sample_sha256="bench", training={},
    )  # fmt: skip
    clients = [int(c) for c in (args.clients or "1,2,4,8").split(",")]
    print(
        f"{args.client_jets} jets per client (Poisson(18)+1 constituents x {K}), {args.client_request} jets per "
        f"request, H = {args.hidden}; {os.cpu_count()} cores shared by clients and server; "
        f"load at start {os.getloadavg()[0]:.1f}\n"
    )
    t_start = time.time()
    summary: dict[str, Any] = {"local": [], "triton": {}}
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(max(clients)) as pool:
        workers = (pool, manager)
        rows = [
            _many_clients("", model, n, args.client_jets, args.client_request, "local", workers=workers)
            for n in clients
        ]
        summary["local"] = rows
        _print_many(rows, header=True)
        for batching in ("off", "on"):
            for instances in (1, 2):
                proc, url, log = _start_qgcal_serve(model, work, batching, instances)
                label = f"triton, batching {batching}, {instances} inst."
                rows = []
                try:
                    for n in clients:
                        row = _many_clients(
                            url, model, n, args.client_jets, args.client_request, "triton", "cons", workers=workers
                        )
                        row["route"] = label
                        rows.append(row)
                        _print_many([row], header=False)
                finally:
                    forwards = _stop_server(proc, log)
                print(f"<!-- {label}: server log: {forwards} -->", flush=True)
                summary["triton"][f"{batching}-{instances}"] = {"rows": rows, "server": forwards}
    shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"wall {time.time() - t_start:.0f} s, load at end {os.getloadavg()[0]:.1f}")
    print(json.dumps(summary, default=float))
    bad = [r for v in summary["triton"].values() for r in v["rows"] if r["failures"] or not r["scores_ok"]]
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jets", type=int, default=300_000)
    parser.add_argument("--per-request", type=int, default=100_000)
    parser.add_argument("--single-jets", type=int, default=2_000, help="jets sent one per request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--clients", default="", help="e.g. 1,2,4,8: also N concurrent client processes")
    parser.add_argument("--client-jets", type=int, default=40_000, help="jets per client process")
    parser.add_argument("--client-request", type=int, default=5_000, help="jets per request of each client")
    parser.add_argument(
        "--matrix", action="store_true", help="only the many-clients table: batching off/on x 1/2 instances"
    )
    parser.add_argument("--serve", nargs=4, metavar=("MODEL", "GRPC", "HTTP", "READY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        m, g, h, r = args.serve
        return _serve(m, int(g), int(h), r)
    if args.matrix:
        return _matrix(args)

    import torch
    from tritonclient import grpc

    from qgcal.inference import TritonSettings
    from qgcal.inference.constituent_model import ConstituentScorer, build_network, save_constituent_model
    from qgcal.inference.triton_client import TritonConstituentScorer, jet_requests

    rng = np.random.default_rng(1)
    counts = (rng.poisson(18, size=args.jets) + 1).astype(np.int64)
    values = rng.normal(size=(int(counts.sum()), K)).astype(np.float32)
    work = Path(tempfile.mkdtemp(prefix="qgcb"))
    torch.manual_seed(0)
    model = work / "cons.safetensors"
    save_constituent_model(
        build_network(K, args.hidden), model, features=FEATURES, hidden=args.hidden,
        training_sample_sha256="bench", training={},
    )  # fmt: skip
    local = ConstituentScorer(model)
    grpc_port, http_port = _free_port(), _free_port()
    ready = work / "ready"
    log = open(work / "server.log", "wb")  # noqa: SIM115 - closed at the end
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(model), str(grpc_port), str(http_port), str(ready)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{(work / 'server.log').read_text()[-3000:]}")
            time.sleep(0.2)
        url = f"127.0.0.1:{grpc_port}"
        limit = [("grpc.max_receive_message_length", 2**31 - 1), ("grpc.max_send_message_length", 2**31 - 1)]
        client = grpc.InferenceServerClient(url, channel_args=limit)
        spans = jet_requests(counts, args.per_request)
        print(
            f"{args.jets} jets, {values.shape[0]} constituents x {K}, H = {args.hidden}, "
            f"{len(spans)} requests of <= {args.per_request} jets, best of {args.repeats}, "
            f"{os.cpu_count()} cores shared by client and server (load {os.getloadavg()[0]:.1f})\n"
        )

        def local_all() -> np.ndarray:
            return np.concatenate(
                [local.predict_constituents(values[v0:v1], counts[j0:j1]) for j0, j1, v0, v1 in spans]
            )

        t_local, ref = _best(local_all, args.repeats)

        settings = TritonSettings(url=url, model_name="fused", batch_size=args.per_request, max_in_flight=4)
        with TritonConstituentScorer(settings, model_path=model) as scorer:
            t_triton, got = _best(lambda: scorer.predict_constituents(values, counts), args.repeats)
        assert got.tobytes() == ref.tobytes(), "fused Triton scores differ from local"

        def fused_seq() -> np.ndarray:
            return np.concatenate([
                _infer(client, grpc, "fused", [("CONSTITUENTS", values[v0:v1], "FP32"),
                                               ("COUNTS", counts[j0:j1], "INT64")], "SCORE")
                for j0, j1, v0, v1 in spans
            ])  # fmt: skip

        def split_seq() -> np.ndarray:
            parts = []
            for j0, j1, v0, v1 in spans:
                h = _infer(client, grpc, "embed", [("CONSTITUENTS", values[v0:v1], "FP32")], "EMBED")
                parts.append(_infer(client, grpc, "pool", [("EMBED", h, "FP32"), ("COUNTS", counts[j0:j1], "INT64")],
                                    "SCORE"))  # fmt: skip
            return np.concatenate(parts)

        def padded_seq() -> np.ndarray:
            parts = []
            for j0, j1, v0, v1 in spans:
                c = counts[j0:j1]
                p = np.zeros((len(c), int(c.max()), K), np.float32)
                p[np.arange(p.shape[1])[None, :] < c[:, None]] = values[v0:v1]
                parts.append(_infer(client, grpc, "padded", [("PADDED", p, "FP32"), ("COUNTS", c, "INT64")], "SCORE"))
            return np.concatenate(parts)

        t_fused, got_f = _best(fused_seq, args.repeats)
        t_split, got_s = _best(split_seq, args.repeats)
        t_pad, got_p = _best(padded_seq, args.repeats)
        assert got_f.tobytes() == ref.tobytes() and got_p.tobytes() == ref.tobytes()
        split_diff = float(np.max(np.abs(got_s - ref)))

        n1 = min(args.single_jets, args.jets)
        s1 = TritonSettings(url=url, model_name="fused", batch_size=1, max_in_flight=4)
        x1 = values[: int(counts[:n1].sum())]
        with TritonConstituentScorer(s1, model_path=model) as one:
            t_one, got1 = _best(lambda: one.predict_constituents(x1, counts[:n1]), 1)
        np.testing.assert_allclose(got1, ref[:n1], rtol=0, atol=2e-4)

        flat_bytes = sum((v1 - v0) * K * 4 + (j1 - j0) * 8 for j0, j1, v0, v1 in spans)
        pad_bytes = sum((j1 - j0) * int(counts[j0:j1].max()) * K * 4 + (j1 - j0) * 8 for j0, j1, _, _ in spans)
        split_bytes = flat_bytes + 2 * values.shape[0] * args.hidden * 4
        n = args.jets

        def row(name: str, t: float, extra: str = "") -> str:
            return f"| {name} | {t:.3f} | {n / t:,.0f} | {t / t_local:.2f} |{extra}"

        print(f"| route ({args.per_request} jets per request unless said) | time (s) | jets/s | time / local |")
        print("|---|---:|---:|---:|")
        print(row("local CPU (ConstituentScorer, same batches)", t_local))
        print(row("Triton fused, TritonConstituentScorer (4 in flight)", t_triton))
        print(row("Triton fused, sequential requests", t_fused))
        print(row("Triton split embed -> pool, sequential (2 round trips)", t_split))
        print(row("Triton fused, padded-to-max layout, sequential", t_pad))
        print(f"| Triton fused, one jet per request ({n1} jets, 4 in flight) | {t_one:.3f} | {n1 / t_one:,.0f} | "
              f"{(t_one / n1) / (t_local / n):.1f} |")  # fmt: skip
        print()
        print("| wire layout | request bytes (all jets) | ratio to flattened |")
        print("|---|---:|---:|")
        print(f"| flattened + counts | {flat_bytes:,} | 1.00 |")
        print(f"| padded to max per request | {pad_bytes:,} | {pad_bytes / flat_bytes:.2f} |")
        print(f"| split (flattened + embedding [N, H] back and forth) | {split_bytes:,} | "
              f"{split_bytes / flat_bytes:.2f} |")  # fmt: skip
        print()
        print(
            json.dumps(
                {
                    "triton_over_local": round(t_triton / t_local, 3),
                    "fused_seq_over_local": round(t_fused / t_local, 3),
                    "split_over_fused": round(t_split / t_fused, 3),
                    "padded_over_flattened": round(t_pad / t_fused, 3),
                    "split_max_abs_diff": split_diff,
                    "one_jet_per_request_jets_per_s": round(n1 / t_one),
                }
            )
        )
        client.close()
        if args.clients:
            print(f"\n{args.client_jets} jets per client, {args.client_request} per request; latency per request")
            for i, n in enumerate(int(c) for c in args.clients.split(",")):
                for route in ("local", "triton"):
                    _print_many([_many_clients(url, model, n, args.client_jets, args.client_request, route)], i == 0
                                and route == "local")  # fmt: skip
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
