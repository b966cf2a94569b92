"""`fleetgen-agent generate`: text (streamed to stdout) or an image (PNG), offline.

    fleetgen-agent generate "Tell me a story about summer"
    fleetgen-agent generate --model DIR --greedy --max-tokens 64 "Once upon a time"
    fleetgen-agent generate --image --class 3 -o three.png
    fleetgen-agent generate --json "Hello"       # text + timings as one JSON document

`--model DIR` takes a fleetgen model folder or an Optimum ONNX decoder export;
`--bundle FILE` a `.fgb` bundle (verified and unpacked into a temporary folder).
Without either: the bundle installed as current in the state dir (`--state-dir`, else the
agent config's, else /var/lib/fleetgen) when its task fits, else the model fleetgen ships
(found as data next to the agent package). Execution providers and TFLite delegates come
from `--providers`, else from the detected (or configured) board profile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import FleetgenError, UsageError

if TYPE_CHECKING:
    from agent.config import LocalSettings
    from agent.runtime.text import TextGenerator
    from firmware.control import PowerController

log = logging.getLogger(__name__)
_native_log = logging.getLogger("agent.runtime.native")  # what native libraries print

SCHEMA = 1


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "generate",
        parents=[common],
        help="generate text or an image on this device",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("prompt", nargs="?", default=None, help="text prompt (text models)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="DIR", type=Path, help="model folder (fleetgen or Optimum export)")
    src.add_argument("--bundle", metavar="FILE", type=Path, help="model bundle (.fgb)")
    p.add_argument("--image", action="store_true", help="generate an image (PNG) instead of text")
    p.add_argument("--class", dest="class_id", type=int, metavar="N", help="image class label")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("image.png"),
        metavar="FILE",
        help="PNG path for --image (default image.png)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document (text/path + timings)")
    p.add_argument("--max-tokens", type=int, metavar="N", help="most new tokens (model default)")
    p.add_argument("--temperature", type=float, metavar="T", help="0 = greedy (model default)")
    p.add_argument("--top-k", type=int, metavar="K", help="keep the K most likely tokens, 0 = off")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus mass in (0, 1], 1 = off")
    p.add_argument("--repetition-penalty", type=float, metavar="R", help="> 0, 1 = off")
    p.add_argument("--seed", type=int, metavar="N", help="random seed (same seed, same output)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence")
    p.add_argument("--threads", type=int, metavar="N", help="inference threads (default: library's)")
    p.add_argument(
        "--providers",
        metavar="LIST",
        help="preferred execution providers, comma-separated (e.g. cuda,cpu)",
    )
    p.set_defaults(func=run, log_level="WARNING")  # its output is the answer; INFO lines are noise


def shipped_model(kind: str, root: Path | None = None) -> Path:
    """The model fleetgen ships for `kind` ("text"/"image"), found as data (never imported).

    Looks in `<dir holding the agent package>/models/<kind>/*/manifest.json`, which is the
    repository in a checkout and site-packages in an install. Quantized variants first
    (int8, then int4), then fp32, by name.
    """
    base = root or Path(__file__).resolve().parents[2] / "models" / kind
    candidates = sorted(p.parent for p in base.glob("*/manifest.json"))
    if not candidates:
        raise UsageError(f"no --model given and no shipped {kind} model under {base}")
    order = {"int8": 0, "int4": 1, "fp16": 2, "fp32": 3}

    def rank(folder: Path) -> tuple[int, int, str]:
        try:
            meta = json.loads((folder / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError):
            return (9, 9, folder.name)
        engine_rank = 0 if meta.get("engine") == "onnxruntime" else 1
        return (order.get(str(meta.get("quantization", "fp32")), 4), engine_rank, folder.name)

    return min(candidates, key=rank)


def installed_model(state_dir: Path, task: str) -> Path | None:
    """The current bundle of the agent's bundle store, if there is one for `task`."""
    from agent.manifest import MANIFEST_NAME, load_manifest
    from agent.update.store import BundleStore

    current = BundleStore(state_dir).current()
    if current is None or not (current / MANIFEST_NAME).is_file():
        return None
    manifest = load_manifest(current)
    if manifest.task != task:
        log.info("installed bundle %s is %s, not %s; using the shipped model", current.name, manifest.task, task)
        return None
    log.info("using the installed bundle %s", current)
    return current


@contextlib.contextmanager
def model_folder(args: argparse.Namespace, state_dir: Path) -> Iterator[Path]:
    if args.model is not None:
        yield args.model
    elif args.bundle is not None:
        from agent.update.bundle import verify_bundle_file

        if not args.bundle.is_file():
            raise UsageError(f"bundle {args.bundle} does not exist")
        with tempfile.TemporaryDirectory(prefix="fleetgen-bundle-") as tmp:
            dest = Path(tmp) / "model"
            dest.mkdir()
            # A bundle that fails verification is refused with the TrustError's exit code (1),
            # as `fleetgen bundle inspect` and `install-bundle` refuse it.
            verify_bundle_file(args.bundle, dest=dest)  # writes manifest.json there too
            yield dest
    else:
        kind = "image" if args.image else "text"
        yield installed_model(state_dir, f"{kind}-generation") or shipped_model(kind)


# How native libraries tag their stderr lines (TFLite: "INFO: Created TensorFlow Lite XNNPACK
# delegate for CPU." on every load), mapped to our levels.
_NATIVE_LEVELS = {"INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


@contextlib.contextmanager
def native_stderr_to_log() -> Iterator[None]:
    """Route what native code writes to fd 2 while a model loads through logging, so that
    TFLite's INFO line shows only at the user's INFO level. Lines without a level tag are
    written back unchanged (nothing is hidden that might matter)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                tag, sep, rest = line.partition(": ")
                if sep and tag in _NATIVE_LEVELS:
                    _native_log.log(_NATIVE_LEVELS[tag], "%s", rest)
                elif line:
                    print(line, file=sys.stderr)


def board_preferences(profile: str | None, root: str = "/") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(ONNX Runtime providers, TFLite delegate libraries) the board prefers, best first.

    `profile` forces a board profile (the agent config's); None detects, reading the tree
    under `root`. Detection is best effort: if it fails, the CPU (always appended by the
    engine) is what runs.
    """
    try:
        from firmware.detect import detect_board
        from firmware.profile import load_profiles

        forced = [p for p in load_profiles() if p.id == profile] if profile else None
        board = detect_board(Path(root), profiles=forced or None)
    except Exception as e:  # firmware reads many files; none of its failures should stop generation
        log.warning("board detection failed (%s); running on the CPU", e)
        return (), ()
    return tuple(board.onnx_providers()), tuple(d.library for d in board.tflite_delegates())


def run(args: argparse.Namespace) -> int:
    from agent.config import local_settings
    from agent.runtime import EngineOptions, ImageGenerator, TextGenerator, load_model

    _check_sampling_flags(args)
    if not args.image and args.prompt is None:
        raise UsageError("give a prompt (or --image)")
    settings = local_settings(args.config, args.state_dir)
    state_dir = settings.state_dir
    providers, delegates = board_preferences(settings.forced_profile, settings.board.root)
    if args.providers:
        providers = tuple(p for p in args.providers.split(",") if p.strip())
    with governor(settings, args.threads) as power:
        # Under a budget the session starts at the governor's thread count (no reload at
        # the first request); --threads is then its ceiling.
        threads = power.runtime.threads if power is not None else args.threads
        options = EngineOptions(threads=threads, providers=providers, tflite_delegates=delegates,
                                budget_binding=power is not None)
        with model_folder(args, state_dir) as folder:
            with native_stderr_to_log():
                generator = load_model(folder, options)
            try:
                if args.image:
                    if not isinstance(generator, ImageGenerator):
                        raise UsageError(f"{folder} is a text model; drop --image")
                    return _image(generator, args)
                if not isinstance(generator, TextGenerator):
                    raise UsageError(f"{folder} is an image model; use --image")
                return _text(generator, args, power)
            finally:
                generator.close()


@contextlib.contextmanager
def governor(settings: LocalSettings, threads: int | None) -> Iterator[PowerController | None]:
    """The power governor this command runs under, ticking in a thread while it runs.

    It governs when `[power] enabled` and a budget is in force: the one the daemon applied
    from the signed desired document (agent/budget.py), else agent.toml's `budget_w`.
    Without a budget there is nothing to hold, and the governed queue runs at full speed.
    Board power modes are the daemon's to change; this command paces and sets threads.
    """
    from agent.budget import budget_in_force

    budget = budget_in_force(settings.state_dir, settings.power.budget_w)
    if not settings.power.enabled or budget.budget_w is None:
        yield None
        return
    from agent.board import open_board
    from firmware.control import PowerController
    from firmware.errors import FirmwareError
    from firmware.settings import PowerSettings

    p = settings.power
    try:
        board = open_board(settings.board)
        power = PowerController(board.detected, PowerSettings(budget_w=budget.budget_w, tick_s=p.tick_s,
                                                              window_s=p.window_s, max_threads=threads),
                                meter=board.meter, change_board_modes=False)
    except (FleetgenError, FirmwareError) as e:
        log.warning("power governor not started (%s); generating without a budget", e)
        yield None
        return
    if budget.budget_w < power.governor.floor_w:
        # The daemon queues work until the budget rises; a one-shot command would hang.
        raise FleetgenError(f"the power budget in force ({budget.budget_w:g} W, from the {budget.source}) "
                            f"is below this board's floor of {power.governor.floor_w:.2f} W: no "
                            "generation is admitted under it")
    log.info("governed by a %.2f W budget (%s)", budget.budget_w, budget.source)
    power.tick()  # decide before the model loads: its session starts at the governed thread count
    stop = threading.Event()
    ticker = threading.Thread(target=power.run, args=(stop,), name="fleetgen-governor", daemon=True)
    ticker.start()
    try:
        yield power
    finally:
        stop.set()
        ticker.join(p.tick_s + 1.0)


def _check_sampling_flags(args: argparse.Namespace) -> None:
    """Refuse bad sampling values before spending seconds on loading a model."""
    from agent.runtime.sampling import SamplingParams
    from agent.runtime.text import TextRequest

    given = {
        k: v
        for k, v in (
            ("temperature", args.temperature),
            ("top_k", args.top_k),
            ("top_p", args.top_p),
            ("seed", args.seed),
            ("repetition_penalty", args.repetition_penalty),
        )
        if v is not None
    }
    SamplingParams(**given)
    if args.max_tokens is not None or args.stop:
        max_tokens = args.max_tokens if args.max_tokens is not None else 1
        TextRequest(prompt="", max_tokens=max_tokens, stop=tuple(args.stop or ()))


def _text(generator: TextGenerator, args: argparse.Namespace, power: PowerController | None = None) -> int:
    """One request through the GenerationQueue the local API uses, under the governor's
    knobs (threads, admission, pacing) when one runs."""
    from agent.runtime.service import GenerationQueue

    request = generator.request(
        args.prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        greedy=args.greedy,
        stop=args.stop,
        ignore_eos=args.ignore_eos,
    )
    out = sys.stdout
    if power is not None and not power.runtime.admit and power.last is not None:
        log.warning("waiting for the power governor to admit work: %s", power.last.reason)
    queue = GenerationQueue(generator, max_pending=1, knobs=power.runtime if power is not None else None)
    try:
        job = queue.submit(request)
        try:
            if not args.json:
                for text in job:
                    out.write(text)
                    out.flush()
            result = job.result()
        except KeyboardInterrupt:
            job.cancel()  # the worker stops before its next decode step
            raise
    finally:
        queue.close()
    t = result.timings
    if args.json:
        doc = {
            "schema": SCHEMA,
            "model": generator.info.name,
            "quantization": generator.info.quantization,
            "text": result.text,
            "finish_reason": result.finish_reason,
            "seed": result.seed,
            "prompt_tokens": t.prompt_tokens,
            "generated_tokens": t.generated_tokens,
            "timings": {
                "load_ms": round(t.load_ms, 2),
                "prefill_ms": round(t.prefill_ms, 2),
                "decode_ms": round(t.decode_ms, 2),
                "decode_tokens_per_s": round(t.decode_tokens_per_s, 2),
                "prefill_tokens_per_s": round(t.prefill_tokens_per_s, 2),
            },
        }
        if power is not None and power.last is not None:
            d = power.last
            doc["power"] = {"budget_w": d.budget_w, "draw_w": round(d.measured_w, 3), "estimated": d.estimated,
                            "threads": d.threads, "duty": round(d.duty, 3)}
        print(json.dumps(doc, ensure_ascii=False))
    else:
        out.write("\n")
    return 0


def _image(generator: Any, args: argparse.Namespace) -> int:
    from agent.runtime import ImageRequest

    result = generator.generate(ImageRequest(class_id=args.class_id, seed=args.seed))
    try:
        args.output.write_bytes(result.png)
    except OSError as e:
        raise UsageError(f"cannot write {args.output}: {e.strerror}") from None
    h, w, c = result.pixels.shape
    if args.json:
        print(
            json.dumps(
                {
                    "schema": SCHEMA,
                    "model": generator.info.name,
                    "path": str(args.output),
                    "width": w,
                    "height": h,
                    "channels": c,
                    "class": result.class_id,
                    "seed": result.seed,
                    "timings": {
                        "load_ms": round(result.load_ms, 2),
                        "run_ms": round(result.run_ms, 2),
                    },
                }
            )
        )
    else:
        print(f"wrote {args.output} ({w}x{h}, class {result.class_id}, seed {result.seed})")
    return 0
