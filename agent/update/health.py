"""The health check of a bundle on trial: a child process, killed at its deadline.

    report = run_health_check(bundle_dir, providers)   # in the agent, any thread
    python -m agent.update.health BUNDLE_DIR           # the child (prints one JSON line)

The child loads the bundle with the board's providers, runs the manifest's self-test,
scores the probe text (perplexity, model-aware: within the tolerance of what `fleetgen
bundle build` recorded on the reference CPU engine, and under `max_perplexity`) and
measures decode speed against the floor. The parent bounds it: address space with
RLIMIT_AS (`memory_limit_mb`), wall time (`time_limit_s`, then SIGKILL), and reads a
crash (a signal, an exit without a report) as a failure. Whatever happens in the child,
the agent stays up and gets a `HealthReport` naming the failed check and its figures.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.manifest import ManifestError, SelfTest, load_manifest
from agent.protocol.messages import Scalar

if TYPE_CHECKING:
    from agent.runtime.text import TextGenerator

log = logging.getLogger(__name__)

DEFAULT_PROBE = (
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife."
)
# Room for the interpreter and onnxruntime themselves when no limit is declared: a
# limit is always set, so a bundle cannot take the device's memory with it.
DEFAULT_MEMORY_MB = 4096
_REPORT_PREFIX = "FLEETGEN-HEALTH "
_CANCEL_POLL_S = 0.1  # how often a running check looks for a newer desired document


@dataclass(frozen=True)
class HealthReport:
    ok: bool
    check: str  # "ok", "load", "self-test", "perplexity", "speed", "timeout", "memory", "crash"
    reason: str
    details: dict[str, Scalar] = field(default_factory=dict)


# -- figures (used by the child and by `fleetgen bundle build`) ----------------------


def probe_perplexity(gen: TextGenerator, text: str) -> float:
    """exp(mean negative log-likelihood) of `text`'s tokens after the first, one decode
    step at a time through the KV cache (the path generation takes)."""
    import numpy as np

    ids = gen.tokenizer.encode(text)[: gen.spec.context_length]
    if len(ids) < 2:
        raise ValueError("probe text has fewer than two tokens")
    gen.decoder.reset(len(ids))
    nll = 0.0
    for i in range(len(ids) - 1):
        logits = gen.decoder.forward([ids[i]]).astype(np.float64)
        top = float(logits.max())
        logsumexp = top + math.log(float(np.exp(logits - top).sum()))
        nll += logsumexp - float(logits[ids[i + 1]])
    return math.exp(nll / (len(ids) - 1))


def measure_reference(model_dir: Path) -> float | None:
    """The probe's perplexity on the reference CPU engine (what bundle build records)."""
    from agent.runtime import load_model
    from agent.runtime.engine import EngineOptions
    from agent.runtime.text import TextGenerator

    manifest = load_manifest(model_dir)
    if manifest.task != "text-generation":
        return None
    gen = load_model(model_dir, EngineOptions(providers=("CPUExecutionProvider",)))
    try:
        assert isinstance(gen, TextGenerator)
        return probe_perplexity(gen, manifest.self_test.probe or DEFAULT_PROBE)
    finally:
        gen.close()


def _decode_speed(gen: TextGenerator, test: SelfTest) -> float:
    result = gen.generate(gen.request(test.prompt or DEFAULT_PROBE[:40], max_tokens=16, greedy=True,
                                      repetition_penalty=1.0, seed=0, ignore_eos=True))
    return result.timings.decode_tokens_per_s


# -- the child -------------------------------------------------------------------------


_MEMORY_HINTS = ("failed to map segment", "cannot allocate memory", "bad_alloc", "memoryerror",
                 "out of memory")


def _memory_like(e: BaseException) -> bool:
    """Under RLIMIT_AS, an allocation fails as MemoryError, or as a library or shared object
    that cannot be mapped (ENOMEM) inside whatever error the loader wraps it in."""
    text = f"{type(e).__name__}: {e}".lower()
    return isinstance(e, MemoryError) or any(h in text for h in _MEMORY_HINTS)


def _check(bundle: Path, providers: tuple[str, ...]) -> HealthReport:
    _fault_hook(bundle, "load")
    t0 = time.perf_counter()
    try:
        from agent.runtime import load_model
        from agent.runtime.engine import EngineOptions
        from agent.runtime.selftest import run_self_test
        from agent.runtime.text import TextGenerator

        options = EngineOptions(providers=providers) if providers else EngineOptions()
        gen = load_model(bundle, options)
    except Exception as e:  # the engines' own errors: the check names them
        if _memory_like(e):
            return HealthReport(False, "memory", f"out of memory while loading the model: {str(e)[:300]}")
        return HealthReport(False, "load", f"the model does not load: {e}")
    details: dict[str, Scalar] = {"load_ms": round((time.perf_counter() - t0) * 1000, 1)}
    _fault_hook(bundle, "selftest")
    report = run_self_test(gen)
    details["selftest_ms"] = round(report.duration_ms, 1)
    if not report.ok:
        return HealthReport(False, "self-test", report.detail, details)
    if isinstance(gen, TextGenerator):
        test = gen.info.self_test
        ppl = probe_perplexity(gen, test.probe or DEFAULT_PROBE)
        details["perplexity"] = round(ppl, 4)
        if test.max_perplexity is not None and ppl > test.max_perplexity:
            return HealthReport(False, "perplexity",
                                f"probe perplexity {ppl:.3f} is above the maximum {test.max_perplexity:g}",
                                details)
        if test.probe_perplexity is not None:
            recorded = test.probe_perplexity
            details["recorded_perplexity"] = recorded
            details["tolerance"] = test.perplexity_tolerance
            if abs(ppl - recorded) > test.perplexity_tolerance * recorded:
                return HealthReport(
                    False, "perplexity",
                    f"probe perplexity {ppl:.3f} on this device, {recorded:.3f} recorded at build "
                    f"(tolerance {test.perplexity_tolerance:.0%})", details)
        speed = _decode_speed(gen, test)
        details["tokens_per_s"] = round(speed, 1)
        if test.min_tokens_per_s is not None and speed < test.min_tokens_per_s:
            return HealthReport(False, "speed",
                                f"decode speed {speed:.1f} tokens/s is under the floor of "
                                f"{test.min_tokens_per_s:g}", details)
    details["peak_mb"] = _peak_mb()
    return HealthReport(True, "ok", report.detail, details)


def _peak_mb() -> float:
    # ru_maxrss is wrong in spawned children (PITFALLS); VmHWM is this process's own.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _fault_hook(bundle: Path, point: str) -> None:
    """Fault injection for the rollback tests: FLEETGEN_HEALTH_FAULT="POINT:ACTION:NAME"
    makes the child hang or die at POINT for the bundle named NAME. Unset in production."""
    spec = os.environ.get("FLEETGEN_HEALTH_FAULT", "")
    for item in filter(None, spec.split(",")):
        at, action, name = [*item.split(":", 2), "", ""][:3]
        if at == point and bundle.name.startswith(name):
            if action == "hang":
                while True:
                    time.sleep(3600)
            if action == "crash":
                os.kill(os.getpid(), signal.SIGKILL)


def child_main(argv: list[str]) -> int:
    bundle = Path(argv[0])
    providers = tuple(p for p in (argv[1] if len(argv) > 1 else "").split(",") if p)
    try:
        report = _check(bundle, providers)
    except Exception as e:
        if _memory_like(e):
            report = HealthReport(False, "memory", f"out of memory during the self-test: {str(e)[:300]}")
        else:
            report = HealthReport(False, "self-test", f"self-test raised {type(e).__name__}: {e}")
    doc = {"ok": report.ok, "check": report.check, "reason": report.reason, "details": report.details}
    sys.stdout.write(_REPORT_PREFIX + json.dumps(doc) + "\n")
    sys.stdout.flush()
    return 0


# -- the parent ------------------------------------------------------------------------


def run_health_check(bundle: Path, providers: tuple[str, ...] = (),
                     cancelled: Callable[[], bool] = lambda: False) -> HealthReport:
    """Run the check of `bundle` in a child, bounded in time and memory (see module doc).
    When `cancelled()` turns true (a newer desired document), the child is killed and the
    report's check is "cancelled": the caller does not judge the bundle by it."""
    try:
        test = load_manifest(bundle).self_test
    except ManifestError as e:
        return HealthReport(False, "load", f"manifest unreadable: {e}")
    limit_mb = test.memory_limit_mb or DEFAULT_MEMORY_MB
    limit = limit_mb * 2**20

    def bound() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        os.setsid()

    argv = [sys.executable, "-m", "agent.update.health", str(bundle), ",".join(providers)]
    t0 = time.monotonic()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=bound, env=env)
    deadline = t0 + test.time_limit_s
    while True:
        try:
            # communicate() again after a timeout carries on reading where it left off
            out, err = proc.communicate(timeout=max(0.0, min(_CANCEL_POLL_S, deadline - time.monotonic())))
            break
        except subprocess.TimeoutExpired:
            stop = cancelled()
            if not stop and time.monotonic() < deadline:
                continue
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            took = time.monotonic() - t0
            if stop:
                return HealthReport(False, "cancelled", "a newer desired document arrived (check killed)",
                                    {"elapsed_s": round(took, 1)})
            return HealthReport(False, "timeout",
                                f"self-test did not finish within its {test.time_limit_s:g} s limit (killed)",
                                {"limit_s": test.time_limit_s, "elapsed_s": round(took, 1)})
    took = round(time.monotonic() - t0, 2)
    for line in out.decode("utf-8", "replace").splitlines():
        if line.startswith(_REPORT_PREFIX):
            doc = json.loads(line[len(_REPORT_PREFIX):])
            details = {**doc["details"], "elapsed_s": took, "memory_limit_mb": limit_mb}
            reason = str(doc["reason"])
            if doc["check"] == "memory":
                reason = f"{reason} (limit {limit_mb} MiB)"
            return HealthReport(bool(doc["ok"]), str(doc["check"]), reason, details)
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["(no output)"]
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return HealthReport(False, "crash", f"the health check process was killed by {name} at load or "
                            f"self-test: {tail[0][:200]}", {"signal": name, "elapsed_s": took})
    if "MemoryError" in err.decode("utf-8", "replace") or "bad_alloc" in err.decode("utf-8", "replace"):
        return HealthReport(False, "memory", f"out of memory under the {limit_mb} MiB limit: {tail[0][:200]}",
                            {"memory_limit_mb": limit_mb, "elapsed_s": took})
    return HealthReport(False, "crash", f"the health check process exited {proc.returncode} without a "
                        f"report: {tail[0][:200]}", {"exit_code": proc.returncode, "elapsed_s": took})


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
