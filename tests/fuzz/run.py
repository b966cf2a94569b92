"""`make fuzz`: every target of tests/fuzz/targets.py under atheris for --seconds each, one
process per target, seeded from a small corpus of valid inputs; prints a table of cases run
and crashes, writes OUT/fuzz.json, exits 1 if any target crashed (its input is in OUT/).

    python -m tests.fuzz.run [--seconds 30] [--out build/fuzz] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]
_RUNS = re.compile(r"(?:Done|#)\s*(\d+)\s*(?:runs|\s+(?:DONE|INITED|NEW|REDUCE|pulse))")


def seeds(name: str) -> list[bytes]:
    """A few valid inputs so the fuzzer starts past the first checks."""
    from agent.protocol import Status, encode

    common = [b"{}", b'{"schema":1}', encode(Status(state="online", ts=1.0, agent_version="1"))]
    if name == "bundle":
        import tempfile

        from agent.update.bundle import build_bundle
        from tests.trust.models import make_model_dir

        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "tiny.fgb"
            build_bundle(make_model_dir(Path(d), size=256), out)
            return [out.read_bytes()]
    if name in ("api_http", "rest_http"):
        return [b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
                b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\n{"prompt":"Once"}']
    if name.endswith("_config"):
        return [b'device_id = "d"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n']
    return common


def run_one(name: str, seconds: int, out: Path) -> dict[str, object]:
    corpus = out / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds(name)):
        (corpus / f"seed-{i}").write_bytes(seed)
    argv = [sys.executable, "-m", "tests.fuzz.harness", name, f"-max_total_time={seconds}", "-rss_limit_mb=4096",
            "-timeout=30", f"-artifact_prefix={out}/{name}-", str(corpus)]
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 300, check=False)
    log = proc.stdout + proc.stderr
    (out / f"{name}.log").write_text(log)
    runs = [int(m) for m in re.findall(r"Done (\d+) runs", log)] or [int(m) for m in re.findall(r"#(\d+)", log)]
    crashed = proc.returncode != 0
    return {"target": name, "cases": max(runs) if runs else 0, "crashed": crashed, "rc": proc.returncode,
            "seconds": round(time.monotonic() - t0, 1),
            "artifacts": sorted(p.name for p in out.glob(f"{name}-*"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=30)
    p.add_argument("--out", type=Path, default=ROOT / "build" / "fuzz")
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(TARGETS)
    results = []
    for name in names:
        r = run_one(name, args.seconds, args.out)
        results.append(r)
        print(f"{name:20} {r['cases']:>9} cases  {'CRASH' if r['crashed'] else 'ok':5}  {r['seconds']:>6} s",
              flush=True)
    total = sum(int(r["cases"]) for r in results)  # type: ignore[call-overload]
    crashes = [r for r in results if r["crashed"]]
    print(f"total: {total} cases, {len(crashes)} target(s) crashed" +
          (": " + ", ".join(f"{r['target']} ({r['artifacts']})" for r in crashes) if crashes else ""))
    (args.out / "fuzz.json").write_text(json.dumps({"schema": 1, "seconds_per_target": args.seconds,
                                                    "total_cases": total, "targets": results}, indent=2) + "\n")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
