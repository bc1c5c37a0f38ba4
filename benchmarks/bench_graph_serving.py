"""Serving the kNN graph tagger: fused (one model) vs split (graph model, then GNN model) vs local.

    python benchmarks/bench_graph_serving.py [--jets 200000] [--per-request 100000] [--repeats 3]
                                             [--hidden 32] [--neighbours 8]

Builds a ``knn`` constituent model (seeded weights; timing does not depend on training) and
jets with Poisson(18)+1 constituents x 6 features, starts one real Triton server (pytriton,
a subprocess on free loopback ports) with three models, all without server-side batching
(docs/triton.md):

* ``fused``: the model ``qgcal serve`` binds (``CONSTITUENTS [N, k]`` + ``COUNTS [n]`` ->
  ``SCORE [n]``): graph building and message passing in one forward pass;
* ``knn_graph`` (``CONSTITUENTS`` + ``COUNTS`` -> ``NEIGHBOURS int64 [N, K]``) then ``knn_gnn``
  (``CONSTITUENTS`` + ``COUNTS`` + ``NEIGHBOURS`` -> ``SCORE``): the "ensemble" shape, two
  round trips, the neighbour list crossing the wire twice and the constituents twice;

and the local route (``ConstituentScorer``, the same batches). The routes are run
interleaved (local, fused, split; ``--repeats`` rounds) and each keeps its best time; every
route's scores are checked against the local ones (bit-identical: the same batches). The
server times its own callables, so the table also says how much of each round trip is the
forward pass and how much is everything else (serialisation, gRPC, pytriton's copies).
Client and server share this machine's cores.
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
FEATURES = ["ptFrac", "deta", "dphi", "charge", "d0", "dz"]
COORDINATES = ["deta", "dphi"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- server side


def _timed(name: str, fn: Callable[[list[dict[str, np.ndarray]]], Any], log: Path) -> Callable[..., Any]:
    """``fn`` with the wall and CPU seconds of each call appended to ``log`` (one JSON line per call).

    Why CPU time too: wall time above the CPU time of the forward's thread is time spent
    waiting for a core (client, server and other processes share them), not extra work.
    """

    def run(requests: list[dict[str, np.ndarray]]) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        out = fn(requests)
        with open(log, "a") as fh:
            fh.write(json.dumps({"model": name, "s": time.perf_counter() - t0, "cpu": time.thread_time() - c0}) + "\n")
        return out

    return run


def _serve(model: str, grpc_port: int, http_port: int, ready_file: str, times: str) -> int:
    """The benchmark's server: fused, knn_graph and knn_gnn on one pytriton server (subprocess mode)."""
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton

    from qgcal.inference.constituent_model import graph_neighbours, load_constituent_model, score_neighbours
    from qgcal.inference.serve import _constituent_binding, _stub_environment, loopback_config

    net, meta = load_constituent_model(model)
    n_nb = meta.neighbours
    log = Path(times)
    fused, _ = _constituent_binding(model, "SCORE")
    fused["infer_func"] = _timed("fused", fused["infer_func"], log)

    def graph(requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return [{"NEIGHBOURS": graph_neighbours(net, r["CONSTITUENTS"], r["COUNTS"])} for r in requests]

    def gnn(requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return [{"SCORE": score_neighbours(net, r["CONSTITUENTS"], r["COUNTS"], r["NEIGHBOURS"])} for r in requests]

    constituents = Tensor(name="CONSTITUENTS", dtype=np.float32, shape=(-1, K))
    counts = Tensor(name="COUNTS", dtype=np.int64, shape=(-1,))
    neighbours = Tensor(name="NEIGHBOURS", dtype=np.int64, shape=(-1, n_nb))
    nb = ModelConfig(batching=False)
    work = Path(tempfile.mkdtemp(prefix="qgg", dir="/tmp"))
    with _stub_environment(), Triton(config=loopback_config(http_port, grpc_port), workspace=work / "w") as triton:
        triton.bind(model_name="fused", strict=True, **fused)
        triton.bind(
            model_name="knn_graph",
            infer_func=_timed("knn_graph", graph, log),
            inputs=[constituents, counts],
            outputs=[neighbours],
            config=nb,
            strict=True,
        )
        triton.bind(
            model_name="knn_gnn",
            infer_func=_timed("knn_gnn", gnn, log),
            inputs=[constituents, counts, neighbours],
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
    shutil.rmtree(work, ignore_errors=True)
    return 0


# ----------------------------------------------------------------------------- client side


class Route:
    """One way of scoring all jets: its best wall time, and the forward's wall and CPU time in that round.

    For the local route the forward is the whole call (this thread's CPU time); for the Triton
    routes, the server's own timing of its callables.
    """

    def __init__(self, name: str, fn: Callable[[], np.ndarray], *, remote: bool) -> None:
        self.name, self.fn, self.remote = name, fn, remote
        self.best, self.server, self.cpu, self.scores = float("inf"), 0.0, 0.0, np.empty(0, np.float32)

    def run(self, times: Path) -> None:
        before = times.stat().st_size if times.exists() else 0
        t0, c0 = time.perf_counter(), time.thread_time()
        scores = self.fn()
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        server = wall
        if self.remote:
            with open(times) as fh:
                fh.seek(before)
                lines = [json.loads(line) for line in fh if line.strip()]
            server, cpu = sum(x["s"] for x in lines), sum(x["cpu"] for x in lines)
        if wall < self.best:
            self.best, self.server, self.cpu, self.scores = wall, server, cpu, scores


def _infer(client: Any, grpc: Any, model: str, arrays: list[tuple[str, np.ndarray, str]], output: str) -> np.ndarray:
    inputs = []
    for name, a, dtype in arrays:
        i = grpc.InferInput(name, list(a.shape), dtype)
        i.set_data_from_numpy(a)
        inputs.append(i)
    return np.asarray(client.infer(model, inputs, outputs=[grpc.InferRequestedOutput(output)]).as_numpy(output))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jets", type=int, default=200_000)
    parser.add_argument("--per-request", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--neighbours", type=int, default=8)
    parser.add_argument("--serve", nargs=5, metavar=("MODEL", "GRPC", "HTTP", "READY", "TIMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        m, g, h, r, t = args.serve
        return _serve(m, int(g), int(h), r, t)

    import torch
    from tritonclient import grpc

    from qgcal.inference.constituent_model import ConstituentScorer, build_network, save_constituent_model
    from qgcal.inference.triton_client import jet_requests

    rng = np.random.default_rng(1)
    counts = (rng.poisson(18, size=args.jets) + 1).astype(np.int64)
    values = rng.normal(size=(int(counts.sum()), K)).astype(np.float32)
    values[:, 1:3] *= 0.2  # deta, dphi: within the jet cone
    work = Path(tempfile.mkdtemp(prefix="qggb"))
    torch.manual_seed(0)
    model = work / "gnn.safetensors"
    coords = tuple(FEATURES.index(c) for c in COORDINATES)
    net = build_network(K, args.hidden, architecture="knn", neighbours=args.neighbours, coordinates=coords)
    save_constituent_model(
        net, model, features=FEATURES, hidden=args.hidden, training_sample_sha256="bench", training={},
        architecture="knn", neighbours=args.neighbours, coordinates=COORDINATES,
    )  # fmt: skip
    local = ConstituentScorer(model)
    grpc_port, http_port = _free_port(), _free_port()
    ready, times = work / "ready", work / "server_times.jsonl"
    log = open(work / "server.log", "wb")  # noqa: SIM115 - closed at the end
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(model), str(grpc_port), str(http_port), str(ready), str(times)],
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
        limit = [("grpc.max_receive_message_length", 2**31 - 1), ("grpc.max_send_message_length", 2**31 - 1)]
        client = grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}", channel_args=limit)
        spans = jet_requests(counts, args.per_request)
        load = os.getloadavg()
        print(
            f"{args.jets} jets, {values.shape[0]} constituents x {K}, knn k = {args.neighbours}, H = {args.hidden}, "
            f"{len(spans)} requests of <= {args.per_request} jets, best of {args.repeats} interleaved rounds, "
            f"{os.cpu_count()} cores shared by client and server (load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})\n"
        )

        def local_all() -> np.ndarray:
            return np.concatenate(
                [local.predict_constituents(values[v0:v1], counts[j0:j1]) for j0, j1, v0, v1 in spans]
            )

        def fused_all() -> np.ndarray:
            return np.concatenate([
                _infer(client, grpc, "fused", [("CONSTITUENTS", values[v0:v1], "FP32"),
                                               ("COUNTS", counts[j0:j1], "INT64")], "SCORE")
                for j0, j1, v0, v1 in spans
            ])  # fmt: skip

        def split_all() -> np.ndarray:
            parts = []
            for j0, j1, v0, v1 in spans:
                x, c = values[v0:v1], counts[j0:j1]
                nb = _infer(client, grpc, "knn_graph", [("CONSTITUENTS", x, "FP32"), ("COUNTS", c, "INT64")],
                            "NEIGHBOURS")  # fmt: skip
                parts.append(_infer(client, grpc, "knn_gnn", [("CONSTITUENTS", x, "FP32"), ("COUNTS", c, "INT64"),
                                                              ("NEIGHBOURS", nb, "INT64")], "SCORE"))  # fmt: skip
            return np.concatenate(parts)

        routes = [
            Route("local", local_all, remote=False),
            Route("fused", fused_all, remote=True),
            Route("split", split_all, remote=True),
        ]
        for r in routes:
            r.fn()  # warm-up: connections, first-call allocations (not timed)
        for _ in range(args.repeats):
            for r in routes:
                r.run(times)
        loc, fused, split = routes
        assert fused.scores.tobytes() == loc.scores.tobytes(), "fused Triton scores differ from local"
        assert split.scores.tobytes() == loc.scores.tobytes(), "split Triton scores differ from local"

        n, nv = args.jets, values.shape[0]
        in_bytes = nv * K * 4 + n * 8
        nb_bytes = nv * args.neighbours * 8
        wire = {"local": 0, "fused": in_bytes + n * 4, "split": 2 * in_bytes + 2 * nb_bytes + n * 4}
        print(
            "| route | time (s) | jets/s | time / local | forward wall (s) | forward CPU (s) | rest (s) "
            "| bytes on the wire |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in routes:
            print(
                f"| {r.name} | {r.best:.3f} | {n / r.best:,.0f} | {r.best / loc.best:.3f} | {r.server:.3f} | "
                f"{r.cpu:.3f} | {r.best - r.server:.3f} | {wire[r.name]:,} |"
            )
        print()
        print(
            json.dumps(
                {
                    "fused_over_local": round(fused.best / loc.best, 3),
                    "split_over_local": round(split.best / loc.best, 3),
                    "split_over_fused": round(split.best / fused.best, 3),
                    "fused_overhead_s": round(fused.best - fused.server, 3),
                    "fused_forward_cpu_over_local_cpu": round(fused.cpu / loc.cpu, 3),
                    "split_overhead_s": round(split.best - split.server, 3),
                }
            )
        )
        client.close()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
