"""Real bundles of the shipped text model for the update lifecycle tests: variants with
their own name/version/self-test, a perturbed copy, a signed repository serving them."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from agent.manifest import file_entries, load_manifest, write_manifest
from agent.protocol.messages import SignedEnvelope
from agent.trust.fetch import LocalFetcher
from agent.trust.layout import TrustPaths, provision
from agent.update.bundle import build_bundle
from agent.update.health import measure_reference

MODELS = Path(__file__).resolve().parents[2] / "models" / "text"
INT8 = MODELS / "austen-3m-int8"
INT4 = MODELS / "austen-3m-int4"
DEVICE = "dev-1"


def variant(root: Path, name: str, version: str, source: Path = INT8, *, perturb: float | None = None,
            record_probe: bool = True, **self_test: Any) -> Path:
    """A copy of `source` as NAME-VERSION with self-test changes. The probe perplexity is
    recorded from the unchanged weights (as `bundle build` would have), then `perturb`
    scales every float initializer by (1 + perturb * noise): weights changed after the probe
    was recorded."""
    dst = root / f"{name}-{version}"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    manifest = load_manifest(source)
    for entry in manifest.files:
        shutil.copyfile(source / entry.path, dst / entry.path)
    shutil.copyfile(source / "manifest.json", dst / "manifest.json")
    test = manifest.self_test
    if record_probe:
        test = msgspec.structs.replace(test, probe_perplexity=measure_reference(dst))
    test = msgspec.structs.replace(test, **self_test)
    if perturb is not None:
        _perturb(dst / manifest.model, perturb)
    manifest = msgspec.structs.replace(manifest, name=name, version=version, self_test=test,
                                       files=file_entries(dst, [f.path for f in manifest.files]))
    write_manifest(dst, manifest)
    return dst


def _perturb(model: Path, scale: float) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model))
    rng = np.random.default_rng(0)
    for init in graph.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype in (np.float32, np.float16) and arr.size > 16:
            noisy = arr * (1 + scale * rng.standard_normal(arr.shape)).astype(arr.dtype)
            init.CopyFrom(numpy_helper.from_array(noisy.astype(arr.dtype), init.name))
    onnx.save(graph, str(model))


class UpdateWorld:
    """A signed repository (controller code) and a provisioned device state directory."""

    def __init__(self, tmp: Path) -> None:
        from controller.director import Director
        from controller.tuf.repository import RepoConfig, Repository

        self.tmp = tmp
        self.repo = Repository.create(tmp / "repo", config=RepoConfig())
        self.director = Director(self.repo)
        self.state = tmp / "device"
        paths = TrustPaths(self.state)
        if not paths.provisioned:
            provision(paths, (self.repo.metadata_dir / "1.root.json").read_bytes())

    def publish(self, model_dir: Path) -> str:
        m = load_manifest(model_dir)
        out = self.tmp / "built" / f"{m.name}-{m.version}.fgb"
        out.parent.mkdir(exist_ok=True)
        build_bundle(model_dir, out)
        self.repo.publish(out)
        return out.name

    def desired(self, target: str | None, **kw: Any) -> SignedEnvelope:
        return self.director.desired(DEVICE, target, **kw)

    def fetcher(self) -> LocalFetcher:
        return LocalFetcher(self.repo.metadata_dir, self.repo.targets_dir)

    def fetcher_args(self) -> list[str]:
        return [str(self.repo.metadata_dir), str(self.repo.targets_dir)]


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def read_journal(state: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((state / "update" / "journal.json").read_bytes())
    return data
