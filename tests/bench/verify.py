"""Benchmark: verifying a 500 MB bundle against `sha256sum` of the same file.

Targets (issue 4): fleetgen's full verification (whole-file TUF hash + every member's
length and sha256, one streamed pass) takes <= 1.25x the wall time of `sha256sum`,
and uses <= 64 MB of extra memory while verifying.

Both read the file from the page cache (a warm-up read first), and each is timed
`--runs` times, alternating; the medians are compared. The verification runs in a
child process so that its peak RSS above the baseline (after imports) is measurable
(sampled every 2 ms, and the kernel's high-water mark VmHWM).
The bundle is generated in a temporary directory and deleted afterwards.

    python tests/bench/verify.py [--size-mb 500] [--runs 3]

Prints a table and writes tests/bench/results/verify.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "verify.json"
MiB = 1024 * 1024

_CHILD = r"""
import json, sys, threading, time
from pathlib import Path
import psutil
from agent.update.bundle import verify_bundle_file
def hwm_mb():  # the kernel's high-water mark of this process image (PITFALLS: not ru_maxrss)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")
path, length, sha = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
proc = psutil.Process()
base_rss = proc.memory_info().rss / 2**20
peak = [base_rss]
done = threading.Event()
def sample():
    while not done.wait(0.002):
        peak[0] = max(peak[0], proc.memory_info().rss / 2**20)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
t0 = time.perf_counter()
v = verify_bundle_file(path, expected_length=length, expected_sha256=sha)
wall = time.perf_counter() - t0
done.set()
sampler.join()
extra = max(peak[0], hwm_mb()) - base_rss
print(json.dumps({"wall_s": wall, "extra_rss_mb": extra, "sha256": v.sha256}))
"""


def make_bundle(tmp: Path, size_mb: int) -> tuple[Path, int, str]:
    """A model folder with one big weights file plus small ones, packed into a bundle."""
    from agent.manifest import ModelManifest, TextSpec, file_entries, write_manifest
    from agent.update.bundle import build_bundle

    model = tmp / "model"
    model.mkdir()
    block = os.urandom(16 * MiB)
    with open(model / "model.onnx", "wb") as f:
        for i in range(size_mb // 16):
            # Cheap, non-repeating content: vary the first bytes of each block.
            f.write(i.to_bytes(8, "little") + block[8:])
    (model / "tokenizer.json").write_text('{"model": {"vocab": {}}}')
    manifest = ModelManifest(
        name="bench",
        version="1.0.0",
        task="text-generation",
        engine="onnxruntime",
        model="model.onnx",
        tokenizer="tokenizer.json",
        files=file_entries(model, ["model.onnx", "tokenizer.json"]),
        text=TextSpec(num_layers=1, num_heads=1, head_dim=8, vocab_size=16, context_length=32),
    )
    write_manifest(model, manifest)
    out = tmp / "bench-1.0.0.fgb"
    verified = build_bundle(model, out)
    shutil.rmtree(model)
    return out, verified.length, verified.sha256


def time_sha256sum(path: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t0, out.split()[0]


def time_verify(path: Path, length: int, sha: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(length), sha], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetgen-bench-") as d:
        path, length, sha = make_bundle(Path(d), args.size_mb)
        with open(path, "rb") as f:  # warm the page cache for both contenders
            while f.read(16 * MiB):
                pass
        sums, verifies, rss = [], [], []
        for _ in range(args.runs):
            wall, digest = time_sha256sum(path)
            assert digest == sha, "sha256sum disagrees with the bundle hash"
            sums.append(wall)
            v = time_verify(path, length, sha)
            verifies.append(v["wall_s"])
            rss.append(v["extra_rss_mb"])
    sha_s, ver_s = statistics.median(sums), statistics.median(verifies)
    ratio = ver_s / sha_s
    result = {
        "schema": 1,
        "bundle_bytes": length,
        "runs": args.runs,
        "sha256sum_s": round(sha_s, 3),
        "fleetgen_verify_s": round(ver_s, 3),
        "ratio": round(ratio, 3),
        "ratio_target": 1.25,
        "extra_rss_mb": round(max(rss), 1),
        "extra_rss_target_mb": 64,
        "ok": ratio <= 1.25 and max(rss) <= 64,
    }
    print(f"{'bundle':<28}{length / MiB:>10.0f} MiB")
    print(f"{'sha256sum (median)':<28}{sha_s:>10.3f} s   {length / MiB / sha_s:>7.0f} MiB/s")
    print(f"{'fleetgen verify (median)':<28}{ver_s:>10.3f} s   {length / MiB / ver_s:>7.0f} MiB/s")
    print(f"{'ratio (target <= 1.25)':<28}{ratio:>10.2f}")
    print(f"{'extra RSS (target <= 64 MB)':<28}{max(rss):>10.1f} MB")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
