"""Agent + local API benchmark: memory, start-up, API speed against the engine, the
decode-ratio check (ORT spinning by situation) with energy per token.

    .venv/bin/python tests/bench/agent_api.py                # everything (~6 min on 2 cores)
    .venv/bin/python tests/bench/agent_api.py --skip-ratio   # without the GPT-2-small check

1. RSS/PSS of `fleetgen-agent run` idle with the API up and no model (target <= 40 MB RSS),
   and with the shipped text model loaded; start -> READY=1 (fake NOTIFY_SOCKET; target
   <= 1.0 s without a model). No broker listens: offline is a normal state.
2. Through `fleetgen-agent serve` (2 threads, spinning off on both sides: this measures the
   API path): streamed decode tok/s seen by a client against direct engine calls in another
   process holding the same model, both as (N-16) / (wall(N) - wall(16)), one request each
   in turn, median of the pairs' ratios (target >= 0.95); with chunks paced at the default
   20 ms and with a chunk per token (`--stream-interval-ms 0`, ADR 0061); the CPU time of
   the server against the direct process, energy per token on each side; time to first
   token; p50/p95 latency with 1, 2 and 4 concurrent clients.
3. The decode-ratio check (issue 10 item 7): `fleetgen-agent generate --greedy --max-tokens N
   --json --ignore-eos --threads 2` on a GPT-2-small-shaped Optimum folder (fp32), decode =
   128 / (wall(144 tokens) - wall(16 tokens)), against bare ONNX Runtime with default
   session options (OrtValues step to step), alternating, median of 7; quiet, and busy
   (two CPU-bound processes beside it). Energy per token from the board's power meter
   (RAPL where readable, else fleetgen's labelled estimate), integrated over the run.

Prints a table and writes tests/bench/results/agent_api.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "tests" / "bench" / "results"
BIN = Path(sys.executable).parent / "fleetgen-agent"
TEXT = REPO / "models" / "text" / "austen-3m-int8"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fleetgen" / "bench"
THREADS = 2
API_TOKENS = 200  # of the 256-token context: long enough to average the shared machine
T = TypeVar("T")
PROMPT = "It is a truth universally acknowledged, that a single man in possession of a good fortune"


# ---------------------------------------------------------------- helpers


def proc_memory(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    pss = None
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        pss = next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    except (OSError, StopIteration):
        pass
    return {"rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1) if pss is not None else None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(THREADS)}


def start_daemon(tmp: Path, with_model: bool) -> tuple[subprocess.Popen[bytes], float, Path]:
    """`fleetgen-agent run` with the API on a socket; returns (process, start->READY s, socket)."""
    from tests.api.processes import FakeSystemd, env_for, install

    tmp.mkdir(parents=True, exist_ok=True)
    state = tmp / "state"
    if with_model:
        install(TEXT, state, tmp)
    sock = Path(tempfile.mkdtemp(prefix="fgbench-")) / "agent.sock"
    config = tmp / "agent.toml"
    config.write_text(f'device_id = "bench-1"\nstate_dir = "{state}"\n[mqtt]\nurl = "mqtt://127.0.0.1:{free_port()}"\n'
                      f'[api]\nsocket = "{sock}"\n')
    systemd = FakeSystemd()
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(BIN), "run", "--config", str(config), "--log-level", "WARNING"],
                            env={**env_for(systemd), "PYTHONPATH": str(REPO)}, stderr=subprocess.DEVNULL)
    systemd.wait_for("READY=1")
    ready_s = time.perf_counter() - t0
    systemd.close()
    return proc, ready_s, sock


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_health(get: Any) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if get("/health") == 200:
                return
        except Exception:  # not listening yet (OSError, httpx's ConnectError)
            pass
        time.sleep(0.05)
    raise SystemExit("model did not become ready")


# ---------------------------------------------------------------- 1. memory and start-up


def bench_daemon() -> dict[str, Any]:
    from agent.api.client import get

    out: dict[str, Any] = {}
    for with_model in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            readies = []
            mem: dict[str, float] = {}
            for _ in range(3):
                proc, ready_s, sock = start_daemon(Path(tmp) / str(len(readies)), with_model)
                readies.append(ready_s)
                if with_model:
                    wait_health(lambda path, s=sock: get(s, path)[0])
                    get(sock, "/v1/models")
                else:
                    get(sock, "/health")
                time.sleep(1.0)  # let the loop settle (first telemetry sample taken)
                mem = proc_memory(proc.pid)
                stop(proc)
            key = "model" if with_model else "idle"
            out[key] = {**mem, "start_to_ready_s": round(statistics.median(readies), 3)}
    return out


# ---------------------------------------------------------------- 2. API against the engine


def direct_worker(folder: Path) -> None:
    """Direct engine calls, one per line read from stdin (the API side runs in between)."""
    from agent.runtime import EngineOptions, TextGenerator, load_model

    gen = load_model(folder, EngineOptions(threads=THREADS, spin=False))  # as the server below
    assert isinstance(gen, TextGenerator)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cpu, t0 = time.process_time(), time.perf_counter()
        req = gen.request(PROMPT, max_tokens=int(line), greedy=True, ignore_eos=True)
        result = gen.generate(req, on_text=lambda _t: None)
        print(json.dumps({"wall_s": time.perf_counter() - t0, "decode_tok_s": result.timings.decode_tokens_per_s,
                          "cpu_s": time.process_time() - cpu}), flush=True)


class DirectEngine:
    """A process holding the same model as the server, asked for one generation at a time."""

    def __init__(self, folder: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--direct-worker", str(folder)], env=env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("direct worker died")
        return json.loads(line)

    def run(self, max_tokens: int) -> tuple[float, float]:
        """(wall seconds of the generate call, CPU seconds of the whole process for it)"""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{max_tokens}\n")
        self.proc.stdin.flush()
        doc = self._read()
        return float(doc["wall_s"]), float(doc["cpu_s"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def stream_once(base: str, max_tokens: int, model: str = "austen-3m-int8") -> dict[str, float]:
    import httpx2 as httpx

    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    times = []
    tokens = 0
    with httpx.Client(timeout=120) as c:
        t0 = time.perf_counter()  # after the client's set-up (an SSL context even for http://)
        with c.stream("POST", f"{base}/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    doc = json.loads(line[6:])
                    if doc["choices"] and doc["choices"][0]["text"]:
                        times.append(time.perf_counter())
                    if doc.get("usage"):
                        tokens = doc["usage"]["completion_tokens"]
        end = time.perf_counter()
    # a chunk may carry several tokens when the loop falls behind: count tokens, not chunks;
    # the first token comes with prefill, decode is the rest (as the engine's timings count)
    rate = (tokens - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return {"ttft_ms": (times[0] - t0) * 1000, "tok_s": rate, "latency_ms": (end - t0) * 1000,
            "chunks": len(times), "tokens": tokens}


def start_serve(folder: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([str(BIN), "serve", "--model", str(folder), "--listen", f"127.0.0.1:{port}",
                             "--threads", str(THREADS), "--spin", "off", "--max-pending", "16", *extra], env=env(),
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    import httpx2 as httpx

    wait_health(lambda path: httpx.get(base + path, timeout=5).status_code)
    return proc, base


def process_cpu_s(pid: int) -> float:
    """CPU time of every thread of `pid` so far (schedstat: nanoseconds, unlike ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


SHORT = 16  # the differential's short request: its wall time holds every fixed cost


def api_against_direct(base: str, direct: DirectEngine, model: str, rounds: int,
                       server_pid: int | None = None, meter: EnergyMeter | None = None) -> dict[str, Any]:
    """Decode rate through the API (streamed, as a client sees it) against direct engine calls,
    both as (N - 16) / (wall(N tokens) - wall(16 tokens)): fixed costs (connection, HTTP,
    prefill) cancel, and so does where the first chunk falls. One pair per round, the order
    of the sides swapped every round (the shared machine's load drifts); the median of the
    pairs' ratios. Beside it, by the same difference, the CPU time the server process spent
    against the direct process's (which other jobs on the machine disturb less than
    wall-clock rates) and the energy per decoded token on each side (the client's work
    included: the meter sees the whole board)."""
    meter = meter or EnergyMeter()
    stream_once(base, 8, model)  # warm
    direct.run(8)
    api_rates, direct_rates, ttfts, chunks = [], [], [], []
    # per side: CPU seconds and joules of the long requests minus the short ones (the decode)
    cpu = {"api": 0.0, "direct": 0.0}
    joules = {"api": 0.0, "direct": 0.0}
    decoded = API_TOKENS - SHORT

    def api_side(n: int) -> tuple[float, float, dict[str, float]]:
        before = process_cpu_s(server_pid) if server_pid else 0.0
        _, j, r = meter.measure(lambda: stream_once(base, n, model))
        return (process_cpu_s(server_pid) - before) if server_pid else 0.0, j, r

    for i in range(rounds):
        order = ("api", "direct") if i % 2 == 0 else ("direct", "api")
        for side in order:
            if side == "api":
                short_cpu, short_j, short = api_side(SHORT)
                long_cpu, long_j, long = api_side(API_TOKENS)
                api_rates.append(decoded / ((long["latency_ms"] - short["latency_ms"]) / 1000))
                ttfts.append(long["ttft_ms"])
                chunks.append(long["chunks"])
            else:
                _, short_j, (short_s, short_cpu) = meter.measure(lambda: direct.run(SHORT))
                _, long_j, (long_s, long_cpu) = meter.measure(lambda: direct.run(API_TOKENS))
                direct_rates.append(decoded / (long_s - short_s))
            cpu[side] += long_cpu - short_cpu
            joules[side] += long_j - short_j
    ratios = [a / d for a, d in zip(api_rates, direct_rates, strict=True)]
    return {"api_stream_tok_s": round(statistics.median(api_rates), 1),
            "direct_tok_s": round(statistics.median(direct_rates), 1),
            "cpu_ratio": round(cpu["api"] / cpu["direct"], 3) if server_pid and cpu["direct"] > 0 else None,
            "ratio": round(statistics.median(ratios), 3), "pairs": rounds,
            "ratio_quartiles": [round(q, 3) for q in statistics.quantiles(ratios, n=4)],
            "ttft_ms_p50": round(statistics.median(ttfts), 1), "chunks_per_stream": statistics.median(chunks),
            "api_j_per_token": round(joules["api"] / (rounds * decoded), 4),
            "direct_j_per_token": round(joules["direct"] / (rounds * decoded), 4),
            "energy_source": meter.label}


def bench_api(folder: Path = TEXT, model: str = "austen-3m-int8", rounds: int = 31,
              concurrency_check: bool = True) -> dict[str, Any]:
    """The API's streaming rate against direct calls: with the default stream interval (20 ms)
    and with every token sent as it comes (--stream-interval-ms 0, how it was before ADR 0061)."""
    direct = DirectEngine(folder)
    out: dict[str, Any] = {}
    try:
        from agent.api.settings import ApiSettings

        for label, interval in (("per_token", "0"), ("default", f"{ApiSettings().stream_interval_ms:g}")):
            proc, base = start_serve(folder, "--stream-interval-ms", interval)
            try:
                out[label] = api_against_direct(base, direct, model, rounds, proc.pid)
                if label == "default" and concurrency_check:
                    out["latency_by_clients"] = concurrency(base)
            finally:
                stop(proc)
    finally:
        direct.close()
    d = out["default"]
    return {**d, "per_token": out["per_token"], "latency_by_clients": out.get("latency_by_clients", {})}


def concurrency(base: str) -> dict[str, Any]:
    out = {}
    for clients in (1, 2, 4):
        latencies: list[float] = []
        lock = threading.Lock()

        def client(lat: list[float] = latencies, lk: threading.Lock = lock) -> None:
            for _ in range(4):
                r = stream_once(base, 32)
                with lk:
                    lat.append(r["latency_ms"])

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ordered = sorted(latencies)
        out[str(clients)] = {"p50_ms": round(statistics.median(ordered), 1),
                             "p95_ms": round(ordered[max(0, round(0.95 * len(ordered)) - 1)], 1),
                             "requests": len(ordered)}
    return out


def diff_worker(folder: Path) -> None:
    """Direct engine: decode rate as 128 / (time(144 tokens) - time(16 tokens)), median of 3."""
    from agent.runtime import EngineOptions, TextGenerator, load_model

    gen = load_model(folder, EngineOptions(threads=THREADS, spin=False))
    assert isinstance(gen, TextGenerator)
    rates = []
    for _ in range(3):
        walls = {}
        for n in (16, 144):
            t0 = time.perf_counter()
            gen.generate(gen.request(PROMPT, max_tokens=n, greedy=True, ignore_eos=True))
            walls[n] = time.perf_counter() - t0
        rates.append(128 / (walls[144] - walls[16]))
    print(json.dumps({"decode_tok_s": statistics.median(rates)}))


def bench_api_diff(folder: Path, model: str, rounds: int = 3) -> dict[str, Any]:
    """A model whose tokens may decode to no text (random weights): the API's decode rate as
    128 / (latency(144) - latency(16)) of non-streamed requests, against the same in-process."""
    import httpx2 as httpx

    port = free_port()
    proc = subprocess.Popen([str(BIN), "serve", "--model", str(folder), "--listen", f"127.0.0.1:{port}",
                             "--threads", str(THREADS), "--spin", "off"], env=env(), stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_health(lambda path: httpx.get(base + path, timeout=5).status_code)
        api_rates, direct_rates = [], []
        with httpx.Client(timeout=600) as c:
            for _ in range(rounds):
                rates = []
                for _ in range(3):
                    walls = {}
                    for n in (16, 144):
                        t0 = time.perf_counter()
                        r = c.post(f"{base}/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": n,
                                                                   "temperature": 0, "ignore_eos": True})
                        walls[n] = time.perf_counter() - t0
                        assert r.json()["usage"]["completion_tokens"] == n
                    rates.append(128 / (walls[144] - walls[16]))
                api_rates.append(statistics.median(rates))
                worker = subprocess.run([sys.executable, __file__, "--diff-worker", str(folder)], capture_output=True,
                                        text=True, env=env(), timeout=900)
                direct_rates.append(json.loads(worker.stdout.strip().splitlines()[-1])["decode_tok_s"])
        ratio = statistics.median(a / d for a, d in zip(api_rates, direct_rates, strict=True))
        return {"api_stream_tok_s": round(statistics.median(api_rates), 1),
                "direct_tok_s": round(statistics.median(direct_rates), 1), "ratio": round(ratio, 3),
                "api_runs": api_rates, "direct_runs": direct_rates}
    finally:
        stop(proc)


# ---------------------------------------------------------------- 3. the decode-ratio check


BARE = """
import sys, time, json
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
folder, n = sys.argv[1], int(sys.argv[2])
so = ort.SessionOptions()                    # default session options (spinning on)
so.intra_op_num_threads = 2
sess = ort.InferenceSession(folder + "/model.onnx", so, providers=["CPUExecutionProvider"])
cfg = json.load(open(folder + "/config.json"))
layers, heads, dim = cfg["n_layer"], cfg["n_head"], cfg["n_embd"] // cfg["n_head"]
ids = Tokenizer.from_file(folder + "/tokenizer.json").encode(sys.argv[3]).ids
names = [o.name for o in sess.get_outputs()]
feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64),
         "position_ids": np.arange(len(ids), dtype=np.int64)[None]}
for i in range(layers):
    for k in ("key", "value"):
        feeds[f"past_key_values.{i}.{k}"] = np.zeros((1, heads, 0, dim), np.float32)
inputs = {i.name for i in sess.get_inputs()}
feeds = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in feeds.items() if k in inputs}
total = len(ids)
for step in range(n):
    out = sess.run_with_ort_values(names, feeds)
    logits = out[0].numpy()
    token = int(np.argmax(logits[0, -1]))
    total += 1
    feeds = {"input_ids": ort.OrtValue.ortvalue_from_numpy(np.array([[token]], np.int64)),
             "attention_mask": ort.OrtValue.ortvalue_from_numpy(np.ones((1, total), np.int64))}
    if "position_ids" in inputs:
        feeds["position_ids"] = ort.OrtValue.ortvalue_from_numpy(np.array([[total - 1]], np.int64))
    for j, name in enumerate(names[1:]):
        feeds[name.replace("present", "past_key_values")] = out[1 + j]
print(json.dumps({"tokens": n}))
"""


def gpt2_small() -> Path:
    from models.gpt2_onnx import SMALL, write_optimum_folder

    folder = CACHE / "gpt2-small-optimum-fp32"
    if not (folder / "model.onnx").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        print("building the GPT-2-small-shaped Optimum folder (once)...", file=sys.stderr)
        write_optimum_folder(folder, SMALL, seed=0, init_scale=4.0)
    return folder


class EnergyMeter:
    """Integrates the board power meter's watts over a run (thread, 10 Hz)."""

    def __init__(self) -> None:
        from agent.board import open_board
        from agent.config import BoardSettings

        self.meter = open_board(BoardSettings()).meter
        self.estimated = False
        self.source = ""

    def measure(self, fn: Callable[[], T]) -> tuple[float, float, T]:
        """(wall seconds, joules, what `fn` returned): the meter's watts integrated while it ran
        (a thread reads it every 20 ms, and once more at the end for the tail)."""
        stop = threading.Event()
        joules = [0.0]

        def read(last: float) -> float:
            now = time.monotonic()
            reading = self.meter.read()
            if reading is not None:
                joules[0] += reading.watts * (now - last)
                self.estimated, self.source = reading.estimated, reading.source
            return now

        def sample() -> None:
            last = time.monotonic()
            while not stop.wait(0.02):
                last = read(last)
            read(last)

        t = threading.Thread(target=sample)
        t.start()
        t0 = time.perf_counter()
        try:
            result = fn()
        finally:
            wall = time.perf_counter() - t0
            stop.set()
            t.join()
        return wall, joules[0], result

    def run(self, argv: list[str]) -> tuple[float, float]:
        """(wall seconds, joules) of one process run."""
        wall, joules, _ = self.measure(lambda: subprocess.run(argv, check=True, capture_output=True, env=env(),
                                                              timeout=900))
        return wall, joules

    @property
    def label(self) -> str:
        if self.estimated:  # idle + per-core watts x the whole machine's CPU use: other jobs too
            return "estimate from whole-machine CPU use"
        return f"{self.source or 'no meter'}, measured"


def bench_ratio(rounds: int) -> dict[str, Any]:
    folder = gpt2_small()
    meter = EnergyMeter()
    prompt = "The old lighthouse keeper climbed the stairs each evening, counting the steps"
    ours = [str(BIN), "generate", "--model", str(folder), "--greedy", "--ignore-eos", "--json",
            "--threads", str(THREADS), "--log-level", "WARNING"]
    bare = [sys.executable, "-c", BARE, str(folder)]
    out: dict[str, Any] = {}
    for condition in ("quiet", "busy"):
        hogs = []
        if condition == "busy":
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        try:
            rates: dict[str, list[float]] = {"ours": [], "bare": []}
            energy: dict[str, list[float]] = {"ours": [], "bare": []}
            for _ in range(rounds):
                for name in ("ours", "bare"):
                    runs = {}
                    for n in (16, 144):
                        argv = [*ours, "--max-tokens", str(n), prompt] if name == "ours" else [*bare, str(n), prompt]
                        runs[n] = meter.run(argv)
                    dt = runs[144][0] - runs[16][0]
                    rates[name].append(128 / dt)
                    energy[name].append((runs[144][1] - runs[16][1]) / 128)
            o, b = statistics.median(rates["ours"]), statistics.median(rates["bare"])
            out[condition] = {"ours_tok_s": round(o, 1), "bare_tok_s": round(b, 1), "ratio": round(o / b, 3),
                              "ours_j_per_token": round(statistics.median(energy["ours"]), 3),
                              "bare_j_per_token": round(statistics.median(energy["bare"]), 3),
                              "load_1min": round(os.getloadavg()[0], 2)}
        finally:
            for h in hogs:
                h.kill()
                h.wait()
    out["energy_source"] = meter.label
    return out


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--direct-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--diff-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--only-ratio", action="store_true", help="only the GPT-2-small parts (section 3)")
    parser.add_argument("--skip-ratio", action="store_true", help="skip the GPT-2-small decode-ratio check")
    parser.add_argument("--rounds", type=int, default=7, help="alternations of the decode-ratio check (median)")
    parser.add_argument("--out", type=Path, default=RESULTS / "agent_api.json")
    args = parser.parse_args()
    if args.direct_worker:
        direct_worker(args.direct_worker)
        return 0
    if args.diff_worker:
        diff_worker(args.diff_worker)
        return 0
    results: dict[str, Any] = {"cpus": os.cpu_count(), "threads": THREADS}
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}

    def save() -> None:  # after each section: a failure later does not lose the figures
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**previous, **results}, indent=2) + "\n")

    if not args.only_ratio:
        results["daemon"] = bench_daemon()
        results["api"] = bench_api()
        save()
    if not args.skip_ratio:
        results["decode_ratio"] = bench_ratio(args.rounds)
        save()
        results["api_gpt2_small"] = bench_api_diff(gpt2_small(), "gpt2")
        save()
    results = {**previous, **results}
    if "daemon" not in results or "api" not in results:  # --only-ratio before any full run
        print(json.dumps({k: results[k] for k in ("decode_ratio", "api_gpt2_small") if k in results}, indent=2))
        return 0
    d, a = results["daemon"], results["api"]
    rows = [
        ("daemon idle, API up, no model: RSS / PSS", f"{d['idle']['rss_mb']} / {d['idle']['pss_mb']} MB", "<= 40 MB"),
        ("daemon with austen-3m-int8 loaded: RSS / PSS", f"{d['model']['rss_mb']} / {d['model']['pss_mb']} MB", ""),
        ("start -> READY=1, no model", f"{d['idle']['start_to_ready_s']} s", "<= 1.0 s"),
        ("start -> READY=1, with a bundle", f"{d['model']['start_to_ready_s']} s", ""),
    ]
    for label, x in (("API streaming, chunks per 20 ms", a), ("API streaming, a chunk per token", a["per_token"])):
        rows += [
            (f"{label} / direct engine decode", f"{x['api_stream_tok_s']} / {x['direct_tok_s']} tok/s = "
                                                f"{x['ratio']} (pairs' IQR {x['ratio_quartiles'][0]}-"
                                                f"{x['ratio_quartiles'][2]})", ">= 0.95"),
            ("  CPU time, server / direct process", f"{x['cpu_ratio']}  ({x['chunks_per_stream']} chunks per "
                                                   f"{API_TOKENS} tokens)", ""),
            (f"  energy per token, API / direct ({x['energy_source']})",
             f"{x['api_j_per_token']} / {x['direct_j_per_token']} J", ""),
        ]
    rows.append(("time to first token through the API (p50)", f"{a['ttft_ms_p50']} ms", ""))
    for clients, lat in a["latency_by_clients"].items():
        rows.append((f"latency, {clients} concurrent client(s), 32 tokens", f"p50 {lat['p50_ms']} ms, "
                     f"p95 {lat['p95_ms']} ms", ""))
    if "api_gpt2_small" in results:
        g = results["api_gpt2_small"]
        rows.append(("API (non-streamed, 144-16) / direct, GPT-2-small fp32",
                     f"{g['api_stream_tok_s']} / {g['direct_tok_s']} tok/s = {g['ratio']}", ">= 0.95"))
    if "decode_ratio" in results:
        r = results["decode_ratio"]
        for condition in ("quiet", "busy"):
            c = r[condition]
            rows.append((f"generate vs bare ORT, GPT-2-small fp32, {condition}",
                         f"{c['ours_tok_s']} / {c['bare_tok_s']} tok/s = {c['ratio']}", ">= 0.95"))
            rows.append((f"  energy per token, {condition} ({r['energy_source']})",
                         f"{c['ours_j_per_token']} / {c['bare_j_per_token']} J", ""))
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:<52} {target}")
    print(f"(a shared machine: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end)")
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
