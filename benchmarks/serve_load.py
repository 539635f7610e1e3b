"""Load test of `transferlm serve`: 8 task adapters on one base model, three batching modes, faults, soak.

Builds 8 LoRA task adapters on the base model (default: randomly initialised LoRA A/B and heads, saved in
our format exactly as `run --set save_model=true` writes them -- throughput does not depend on the weights'
values; `--adapters trained` trains each for a few K=16 steps instead), starts `transferlm serve` in a
subprocess on loopback for each batching mode (mixed, per-task, none), and runs N concurrent closed-loop
clients, each sending one input per request for a uniformly random task over a keep-alive connection (a
minimal HTTP/1.1 client on asyncio streams, ~1% of a core at 100 req/s; `--client httpx` spends ~0.9 of a
core at 128 clients and then limits the load itself). Reports throughput, p50/p99 latency, failed requests,
the mean rows per forward pass and the client's own CPU use, and the ratio mixed / one-at-a-time. Against
the mixed server it then runs the faults (clients that disconnect mid-request, a slow client that
trickles its body while others load the server, a burst beyond the queue bound) and an optional soak that
samples the server's RSS. Writes JSON to benchmarks/results/.

Usage:
    python benchmarks/serve_load.py                                  # minilm-l6, ~4 minutes on 2 cores
    python benchmarks/serve_load.py --soak-seconds 300               # plus a 5-minute soak
    python benchmarks/serve_load.py --model smollm2-135m --clients 16 --no-faults   # -> serve-load-smollm2.json
    python benchmarks/serve_load.py --precision bf16 --clients 8,32 --no-faults --out /tmp/bf16.json

On a GPU machine without the data or the model packages (benchmarks/gpu/: prepare.sh here, run_serve.sh there),
`--write-inputs FILE` saves the test inputs this picks from --data-dir, `--inputs FILE` reads them back, and
`--model` takes a model folder (with random weights from benchmarks/gpu/model_shapes.py; throughput does not
depend on their values). `--device cuda` makes the servers fail at start rather than fall back to the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from load_client import RawConnection, closed_loop, public, raw_request, rss_mb, summarise  # noqa: E402
from serve_tasks import (
    TASKS,
    build_adapters,
    check_inputs,
    load_inputs,
    read_inputs,
    served_name,
    synthetic_inputs,
)

from transferlm.io import write_json

REPO = Path(__file__).resolve().parents[1]
# -- the server -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`transferlm serve` in a subprocess; stop() sends SIGTERM and reports how it ended."""

    def __init__(self, config: Path, mode: str, args: argparse.Namespace, log: Path, wait: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "transferlm", "serve", "--config", str(config), "--batching", mode,
               "--port", str(self.port), "--threads", str(args.threads), "--log-level", "warning",
               "--precision", args.precision]
        if getattr(args, "device", None):
            cmd += ["--device", args.device]
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(args.threads))
        self.log = log.open("w")
        self.log_path = log
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self.startup_s = 0.0
        if not wait:
            return
        self.wait_ready()

    def wait_ready(self) -> None:
        """Poll /health until the server answers (up to ~2 minutes of failed polls); SystemExit if it exits."""
        log = self.log_path
        for _ in range(1200):
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {log}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"server did not start; see {log}:\n{self.log_tail()}")
        self.startup_s = round(time.perf_counter() - self.t0, 1)

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log.close()
        return {"exit_code": code, "exit_seconds": round(time.perf_counter() - t0, 2)}


def scrape(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for s in fam.samples:
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
            out[key] = s.value
    return out


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def status_deltas(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    """classify requests by HTTP status between two scrapes, summed over tasks."""
    out: dict[str, int] = {}
    for key in after:
        if key.startswith("transferlm_requests_total{"):
            status = key.split("status=")[1].split(",")[0].rstrip("}")
            out[status] = out.get(status, 0) + int(delta(after, before, key))
    return {k: v for k, v in sorted(out.items()) if v}


# -- load ------------------------------------------------------------------------------------------------------


async def fault_disconnect(server: Server, inputs: dict[str, list[Any]], n: int) -> dict[str, Any]:
    """n clients send a full request and hang up at once, while 16 normal clients load the server."""
    before = scrape(server.url)
    port = server.port

    async def hang_up(i: int) -> None:
        await asyncio.sleep(0.02 * i)
        task = sorted(inputs)[i % len(inputs)]
        body = json.dumps({"task": task, "inputs": [inputs[task][0]] * 8}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw_request(body, port))
        await writer.drain()
        await asyncio.sleep(0.001 * (i % 10))
        writer.close()

    load = asyncio.create_task(closed_loop(server.url, inputs, 16, seconds=max(3.0, 0.02 * n + 2), warmup=0.0))
    await asyncio.gather(*(hang_up(i) for i in range(n)))
    others = public(await load)
    after = scrape(server.url)
    return {"disconnecting_clients": n, "server_status_counts": status_deltas(after, before),
            "dropped_before_compute": delta(after, before, "transferlm_rejected_total{reason=disconnected}"),
            "other_clients": others, "health_after": httpx.get(f"{server.url}/health", timeout=10).json()}


async def fault_slow_client(server: Server, inputs: dict[str, list[Any]], trickle_s: float,
                            header_timeout: float) -> dict[str, Any]:
    """One client trickles its body a byte at a time over ``trickle_s`` s, and 20 open connections send half
    a header and stall (past the server's ``header_timeout``), while 16 normal clients load the server."""
    port = server.port
    task = sorted(inputs)[0]
    body = json.dumps({"task": task, "inputs": [inputs[task][0]]}).encode()
    request = raw_request(body, port)

    async def trickle() -> dict[str, Any]:
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head, rest = request[:len(request) - len(body)], body
        writer.write(head)
        for i in range(len(rest)):
            writer.write(rest[i:i + 1])
            await writer.drain()
            await asyncio.sleep(trickle_s / len(rest))
        status_line = (await asyncio.wait_for(reader.readline(), 30)).decode().strip()
        writer.close()
        return {"status_line": status_line, "seconds": round(time.perf_counter() - t0, 2)}

    stalled_seconds: list[float] = []

    async def stall() -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        t0 = time.perf_counter()
        try:
            line = await asyncio.wait_for(reader.readline(), max(trickle_s, header_timeout) + 3)
            stalled_seconds.append(time.perf_counter() - t0)
            return line.decode().strip() or "closed by server"
        except TimeoutError:
            return "still open (no answer)"
        finally:
            writer.close()

    load = asyncio.create_task(closed_loop(server.url, inputs, 16, seconds=trickle_s + 2, warmup=0.0))
    slow, *stalled = await asyncio.gather(trickle(), *(stall() for _ in range(20)))
    others = public(await load)
    outcomes: dict[str, int] = {}
    for s in stalled:
        outcomes[s] = outcomes.get(s, 0) + 1
    return {"slow_body_client": slow, "stalled_half_headers": outcomes, "header_timeout_s": header_timeout,
            "stalled_answered_after_s": round(max(stalled_seconds), 2) if stalled_seconds else None,
            "other_clients": others}


async def fault_burst(server: Server, inputs: dict[str, list[Any]], n: int, max_queue: int) -> dict[str, Any]:
    """n requests at once against a queue bound of ``max_queue``: what is answered, what is refused, how fast."""
    before = scrape(server.url)
    rng = random.Random(1)
    tasks = sorted(inputs)
    host, port = "127.0.0.1", server.port
    conns = [RawConnection(host, port) for _ in range(n)]
    await asyncio.gather(*(c.connect() for c in conns))  # connected first: the burst is n requests, not n handshakes

    async def one(conn: RawConnection) -> tuple[int, float]:
        task = rng.choice(tasks)
        body = json.dumps({"task": task, "inputs": [rng.choice(inputs[task])]}).encode()
        t0 = time.perf_counter()
        try:
            return await asyncio.wait_for(conn.post(raw_request(body, port)), 60), time.perf_counter() - t0
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            return -1, time.perf_counter() - t0
        finally:
            await conn.close()

    results = await asyncio.gather(*(one(c) for c in conns))
    last = RawConnection(host, port)
    body = json.dumps({"task": tasks[0], "inputs": [inputs[tasks[0]][0]]}).encode()
    after_status = await last.post(raw_request(body, port))
    await last.close()
    after = scrape(server.url)
    by_status: dict[str, list[float]] = {}
    for status, seconds in results:
        by_status.setdefault(str(status), []).append(seconds * 1000)
    return {"burst": n, "max_queue": max_queue,
            "status_counts": {k: len(v) for k, v in sorted(by_status.items())},
            "p50_ms_by_status": {k: round(float(np.percentile(v, 50)), 1) for k, v in sorted(by_status.items())},
            "queue_high_water_mark": after.get("transferlm_queue_depth_max"),
            "queue_full_counter": delta(after, before, "transferlm_rejected_total{reason=queue_full}"),
            # Inside the app (handler start to answer); the client's timing above adds HTTP parsing of the
            # whole burst (connections were open before it) and the load generator's own share of the CPU.
            "server_side_mean_ms_rejected": round(1000 * delta(after, before, "transferlm_rejection_latency_seconds_sum")
                                                  / max(1.0, delta(after, before,
                                                                   "transferlm_rejection_latency_seconds_count")), 2),
            "request_after_burst": after_status,
            "resent": sum(c.resent for c in conns)}  # answered only on a second connection: dropped once


# -- main -------------------------------------------------------------------------------------------------------


def batch_stats(after: dict[str, float], before: dict[str, float], seconds: float) -> dict[str, float]:
    n = delta(after, before, "transferlm_batch_rows_count")
    fwd = delta(after, before, "transferlm_forward_seconds_sum")
    # The share of wall time the inference thread spent in forward passes: near 1, the model is the bound;
    # well below, time goes to HTTP, queueing or the load generator.
    return {"forward_passes": n, "forward_busy": round(fwd / seconds, 3) if seconds else 0.0,
            "mean_forward_ms": round(1000 * fwd / n, 1) if n else 0.0,
            "mean_rows_per_pass": round(delta(after, before, "transferlm_batch_rows_sum") / n, 2) if n else 0.0,
            "mean_tasks_per_pass": round(delta(after, before, "transferlm_batch_tasks_sum") / n, 2) if n else 0.0}


def ratios(modes: dict[str, dict[str, Any]]) -> dict[str, float]:
    out = {}
    if "mixed" in modes and "none" in modes and modes["none"]["throughput_rps"]:
        out["ratio_mixed_over_none"] = round(modes["mixed"]["throughput_rps"] / modes["none"]["throughput_rps"], 2)
    if "mixed" in modes and "per-task" in modes and modes["per-task"]["throughput_rps"]:
        out["ratio_mixed_over_per_task"] = round(modes["mixed"]["throughput_rps"] / modes["per-task"]["throughput_rps"],
                                                 2)
    return out


def measure_modes(servers: dict[str, Server], inputs: dict[str, list[Any]], clients: int,
                  args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Closed-loop load at ``clients`` concurrency against each mode's server; per-mode stats."""
    modes = list(servers)
    # Rounds interleave the modes (in a rotating order), so a shared machine's changing load hits them alike.
    before = {m: scrape(servers[m].url) for m in modes}
    raw: dict[str, tuple[list[float], list[int]]] = {m: ([], []) for m in modes}
    per_round: dict[str, list[float]] = {m: [] for m in modes}
    client_cpu: dict[str, list[float]] = {m: [] for m in modes}
    resent: dict[str, int] = dict.fromkeys(modes, 0)
    for r in range(args.rounds):
        order = modes[r % len(modes):] + modes[:r % len(modes)]
        for mode in order:
            stats = asyncio.run(closed_loop(servers[mode].url, inputs, clients, args.seconds, args.warmup, seed=r,
                                            client=args.client))
            client_cpu[mode].append(stats["client_cpu"])
            resent[mode] += stats["resent"]
            raw[mode][0].extend(stats["_raw"][0])
            raw[mode][1].extend(stats["_raw"][1])
            per_round[mode].append(stats["throughput_rps"])
            print(f"  {clients} clients, round {r + 1} {mode:8s} {stats['throughput_rps']:6.1f} req/s  "
                  f"p50 {stats['p50_ms']} ms  p99 {stats['p99_ms']} ms  failed {stats['failed']}  "
                  f"resent {stats['resent']}  "
                  f"client cpu {stats['client_cpu']}", flush=True)
    out = {}
    for mode in modes:
        stats = summarise(*raw[mode], args.seconds * args.rounds)
        # Between the scrapes this server was loaded for its rounds' warm-up and measured seconds only.
        stats.update(batch_stats(scrape(servers[mode].url), before[mode], args.rounds * (args.seconds + args.warmup)))
        stats["throughput_rps_per_round"] = per_round[mode]
        stats["resent"] = resent[mode]  # answered, but only on a second try: the server dropped a connection
        stats["client_cpu"] = round(float(np.mean(client_cpu[mode])), 2)  # ~1.0: the load generator was the limit
        stats["startup_seconds"] = servers[mode].startup_s
        stats["rss_mb_after_load"] = round(rss_mb(servers[mode].proc.pid), 1)
        out[mode] = stats
    return out


def device_info(device: str | None) -> dict[str, Any]:
    """What the servers compute on (serve --device; auto picks cuda when there is one), for the report."""
    import torch
    import transformers

    want = device or "auto"
    cuda = torch.cuda.is_available()
    uses_cuda = want.startswith("cuda") or (want == "auto" and cuda)
    out: dict[str, Any] = {"requested": want, "type": "cuda" if uses_cuda else "cpu", "torch": torch.__version__,
                           "transformers": transformers.__version__}
    if uses_cuda and cuda:
        index = int(want.split(":")[1]) if ":" in want else 0
        out["name"] = torch.cuda.get_device_name(index)
        out["cuda"] = torch.version.cuda
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--adapters", choices=["random", "trained"], default="random",
                    help="random: random LoRA weights in our format (default); trained: a few K=16 steps each")
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--clients", default="32",
                    help="concurrent closed-loop clients; a comma list (8,32,64) sweeps them, the last is reported in full")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per mode and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs every mode once, interleaved")
    ap.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds before each measurement")
    ap.add_argument("--modes", default="mixed,per-task,none")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                    help="server torch threads (default 2: the raw load generator needs ~1%% of a core)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="the server's forward passes in fp32 or under bf16 autocast (serve --precision)")
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw",
                    help="load generator: raw (a minimal keep-alive HTTP/1.1 client, default) or httpx (several times "
                         "more CPU per request: at 64+ clients it limits the load it offers)")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--burst", type=int, default=400, help="requests fired at once in the burst fault")
    ap.add_argument("--header-timeout", type=float, default=10.0,
                    help="the server's header_timeout_s; the stalled half-header clients wait past it")
    ap.add_argument("--no-faults", action="store_true")
    ap.add_argument("--soak-seconds", type=float, default=0.0, help="mixed-mode soak, sampling the server's RSS")
    ap.add_argument("--device", default=None,
                    help="the servers' device (serve --device): auto (default: cuda when there is one), cpu, cuda")
    ap.add_argument("--parallel-start", action="store_true",
                    help="start the modes' servers at once rather than one after another (a machine with cores to spare)")
    ap.add_argument("--data-dir", default=os.environ.get("TRANSFERLM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--inputs", default=None,
                    help="read the inputs from this JSON file (written by --write-inputs) instead of --data-dir")
    ap.add_argument("--write-inputs", metavar="FILE", default=None,
                    help="write the inputs picked from --data-dir (up to 300 test inputs per task) to FILE and exit")
    ap.add_argument("--work", default="runs/bench-serve")
    ap.add_argument("--out", default=None, help="default benchmarks/results/serve-load-<model>.json")
    args = ap.parse_args()
    try:
        client_counts = [int(c) for c in str(args.clients).split(",")]
    except ValueError:
        ap.error(f"--clients {args.clients!r}: give a number or a comma list of numbers, e.g. 8,32,64")
    if any(c < 1 for c in client_counts):
        ap.error(f"--clients {args.clients!r}: every count must be >= 1")
    if args.write_inputs:
        inputs = check_inputs(load_inputs(args.data_dir), args.data_dir)
        missing = [task for task in TASKS if inputs[served_name(task)] == synthetic_inputs(task)]
        if missing:
            raise SystemExit(f"--write-inputs: no data for {', '.join(missing)} in {args.data_dir}; give --data-dir "
                             "(or TRANSFERLM_DATA) the folder holding lm-bff/")
        Path(args.write_inputs).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(args.write_inputs), inputs)
        print(f"{sum(len(v) for v in inputs.values())} inputs of {len(inputs)} tasks -> {args.write_inputs}")
        return
    inputs = read_inputs(args.inputs) if args.inputs else None
    out_path = Path(args.out or f"benchmarks/results/serve-load-{args.model.split('/')[-1].split('-')[0]}.json")
    work = Path(args.work) / args.model.replace("/", "_")
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    t0 = time.perf_counter()
    folders = build_adapters(args.model, work, args.adapters, args.data_dir, args.train_steps)
    print(f"8 {args.adapters} LoRA adapters on {args.model} in {time.perf_counter() - t0:.0f}s", flush=True)
    if inputs is None:
        inputs = load_inputs(args.data_dir)
    config = work / "serve.yaml"
    config.write_text(yaml.safe_dump({"model": args.model, "tasks": folders, "max_batch_size": args.max_batch_size,
                                      "max_wait_ms": args.max_wait_ms, "max_queue": args.max_queue,
                                      "request_timeout_s": 60.0, "header_timeout_s": args.header_timeout}))
    report: dict[str, Any] = {
        "model": args.model, "adapters": f"8 LoRA (r=8, q/v) adapters, {args.adapters} weights",
        "tasks": list(folders), "clients": client_counts[-1], "seconds_per_mode": args.seconds * args.rounds,
        "rounds": args.rounds, "client": args.client,
        "server": {"threads": args.threads, "precision": args.precision, "max_batch_size": args.max_batch_size,
                   "max_wait_ms": args.max_wait_ms,
                   "max_queue": args.max_queue},
        "machine": f"{os.cpu_count()} CPU cores; client and server on the same cores; load average before the "
                   f"servers started {os.getloadavg()[0]:.2f} (above 0.5: other jobs shared the cores)",
        "device": device_info(args.device), "inputs": args.inputs or args.data_dir,
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "modes": {}}
    modes = args.modes.split(",")
    servers: dict[str, Server] = {}
    try:
        run_servers(servers, config, modes, inputs, client_counts, work, report, args)
    except BaseException:
        for server in servers.values():  # a failed run leaves no server behind (it would hold the GPU, the cores)
            if server.proc.poll() is None:
                server.proc.kill()
        raise
    modes = report["modes"]
    report.update(ratios(modes))
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    for n, row in report.get("by_clients", {}).items():
        print(f"{n:>4s} clients: " + "  ".join(f"{m} {row[m]['throughput_rps']} req/s" for m in report["modes"])
              + (f"  mixed/none {row['ratio_mixed_over_none']}x" if "ratio_mixed_over_none" in row else ""))
    print("\nmode      req/s   p50 ms   p99 ms  failed  rows/pass  fwd ms  fwd busy  client cpu")
    for mode, s in modes.items():
        print(f"{mode:8s} {s['throughput_rps']:6.1f} {s['p50_ms']:8.1f} {s['p99_ms']:8.1f} {s['failed']:7d} "
              f"{s['mean_rows_per_pass']:10.2f} {s['mean_forward_ms']:7.1f} {s['forward_busy']:9.2f} {s['client_cpu']:11.2f}")
    if "ratio_mixed_over_none" in report:
        print(f"mixed / one-at-a-time: {report['ratio_mixed_over_none']}x"
              + (f"; mixed / per-task: {report['ratio_mixed_over_per_task']}x" if "ratio_mixed_over_per_task" in report
                 else ""))
    write_json(out_path, report)
    print(f"-> {out_path}")


def run_servers(servers: dict[str, Server], config: Path, modes: list[str], inputs: dict[str, list[Any]],
                client_counts: list[int], work: Path, report: dict[str, Any], args: argparse.Namespace) -> None:
    """Start a server per mode (into ``servers``), load them, run the faults and soak, stop them; into ``report``."""
    for mode in modes:  # all up at once: an idle server costs memory, not CPU
        servers[mode] = Server(config, mode, args, work / f"server-{mode}.log", wait=not args.parallel_start)
    for mode in modes:
        if args.parallel_start:
            servers[mode].wait_ready()
        print(f"[{mode}] server up in {servers[mode].startup_s}s (rss {rss_mb(servers[mode].proc.pid):.0f} MB)",
              flush=True)
    by_clients: dict[str, dict[str, Any]] = {}
    for clients in client_counts:
        by_clients[str(clients)] = measure_modes(servers, inputs, clients, args)
    # The detailed per-mode report is the largest concurrency's; the sweep keeps the headline numbers of each.
    report["modes"] = by_clients[str(client_counts[-1])]
    if len(client_counts) > 1:
        report["by_clients"] = {n: {m: {k: s[k] for k in ("throughput_rps", "p50_ms", "p99_ms", "failed", "resent",
                                                           "mean_rows_per_pass", "forward_busy")}
                                    for m, s in stats.items()} | ratios(stats)
                                for n, stats in by_clients.items()}
    mixed = servers.get("mixed")
    if mixed is not None and not args.no_faults:
        faults = {}
        faults["disconnect"] = asyncio.run(fault_disconnect(mixed, inputs, 60))
        fd = faults["disconnect"]
        print(f"[fault] disconnect: server statuses {fd['server_status_counts']}, dropped before compute "
              f"{fd['dropped_before_compute']:.0f}, other clients failed {fd['other_clients']['failed']}, "
              f"health {fd['health_after']['status']}", flush=True)
        faults["slow_client"] = asyncio.run(fault_slow_client(mixed, inputs, 4.0, args.header_timeout))
        fs = faults["slow_client"]
        print(f"[fault] slow client: {fs['slow_body_client']}, stalled: {fs['stalled_half_headers']}; others "
              f"p99 {fs['other_clients']['p99_ms']} ms failed {fs['other_clients']['failed']}", flush=True)
        faults["burst"] = asyncio.run(fault_burst(mixed, inputs, args.burst, args.max_queue))
        print(f"[fault] burst: {json.dumps(faults['burst'])}", flush=True)
        report["faults"] = faults
    if mixed is not None and args.soak_seconds > 0:
        print(f"[soak] {args.soak_seconds:.0f}s mixed load, sampling RSS", flush=True)
        soak = public(asyncio.run(closed_loop(mixed.url, inputs, client_counts[-1], args.soak_seconds, 0.0, seed=7,
                                              rss_pid=mixed.proc.pid, rss_every=max(2.0, args.soak_seconds / 60),
                                              client=args.client)))
        rss = [m for _, m in soak["rss_mb"]]
        half = len(rss) // 2
        soak["rss_summary"] = {"first_mb": rss[0], "last_mb": rss[-1], "min_mb": min(rss), "max_mb": max(rss),
                               "second_half_growth_mb": round(rss[-1] - rss[half], 1) if half else 0.0,
                               "fitted_slope_mb_per_min": round(60 * float(np.polyfit(
                                   [t for t, _ in soak["rss_mb"]], rss, 1)[0]), 2) if len(rss) > 2 else 0.0}
        report["soak"] = soak
        print(f"[soak] {soak['throughput_rps']} req/s, failed {soak['failed']}, resent {soak['resent']}, rss {soak['rss_summary']}",
              flush=True)
    for mode, server in servers.items():
        report["modes"][mode]["shutdown"] = server.stop()


if __name__ == "__main__":
    main()
