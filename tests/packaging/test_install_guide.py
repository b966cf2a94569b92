"""The README's install guide, run as written: `make dist`, then the device install and the
controller install, each into a fresh virtual environment from the wheel (issue 8, item 1).

Slow (a venv per kind, ~1 min together); pip uses its index as configured, with one cache
for the run in a temporary directory, so nothing lands in ~/.cache.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
VENV = "/opt/fleetgen/venv"
WHEEL = "./fleetgen-0.1.0-py3-none-any.whl"

pytestmark = pytest.mark.slow


def install_section() -> str:
    start = README.index("### Install")
    return README[start:README.index("\n### ", start + 1)]


def block_after(marker: str) -> list[str]:
    """The command lines of the first ```sh block after `marker` in the install section."""
    text = install_section()
    at = text.index(marker)
    m = re.search(r"```sh\n(.*?)```", text[at:], re.S)
    assert m, f"no sh block after {marker!r}"
    return [line.split("  #")[0].strip() for line in m.group(1).splitlines() if line.strip()]


@dataclass(frozen=True)
class Dist:
    wheel: Path
    sdist: Path
    pip_cache: Path


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dist]:
    assert block_after("fleetgen is not on PyPI") == ["make dist"]
    out = tmp_path_factory.mktemp("dist")
    cache = tmp_path_factory.mktemp("pip-cache")
    env = {**os.environ, "PIP_CACHE_DIR": str(cache)}
    proc = subprocess.run(["make", "-C", str(REPO), "dist", f"DIST={out}"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    assert wheels[0].name == Path(WHEEL).name  # the name the guide uses
    yield Dist(wheels[0], sdists[0], cache)


def test_the_wheel_and_sdist_carry_models_and_board_profiles(dist: Dist) -> None:
    names = set(zipfile.ZipFile(dist.wheel).namelist())
    with tarfile.open(dist.sdist) as tf:
        sdist = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for model in (REPO / "models").glob("*/*/manifest.json"):
        for f in model.parent.iterdir():
            rel = str(f.relative_to(REPO))
            assert rel in names and rel in sdist, rel
    for profile in (REPO / "firmware" / "boards").glob("*.toml"):
        rel = str(profile.relative_to(REPO))
        assert rel in names and rel in sdist, rel
    assert not any(n.startswith("tests/") for n in names)


def _run_guide(kind_marker: str, dist: Dist, root: Path) -> tuple[Path, list[subprocess.CompletedProcess[str]]]:
    """Run the guide's block for one kind, with the venv and repo paths moved under `root`."""
    venv = root / "venv"
    work = root / "work"
    work.mkdir(parents=True)
    shutil.copy2(dist.wheel, work / dist.wheel.name)  # "copy the wheel there first"
    env = {**os.environ, "PIP_CACHE_DIR": str(dist.pip_cache), "PIP_NO_COMPILE": "1"}
    results = []
    for line in block_after(kind_marker):
        cmd = line.replace(VENV, str(venv)).replace("/srv/fleetgen/repo", str(root / "srv-repo"))
        proc = subprocess.run(["bash", "-euc", cmd], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
        results.append(proc)
    return venv, results


def _cmd(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def _installed(venv: Path, *modules: str) -> list[str]:
    code = "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))"
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code, *modules], capture_output=True, text=True)
    return proc.stdout.split()


def test_device_install(dist: Dist, tmp_path: Path) -> None:
    venv, results = _run_guide("On a device", dist, tmp_path)
    assert "board" in results[-2].stdout  # fleetgen-agent hw: found its board profiles as data
    assert results[-1].stdout.strip()  # fleetgen-agent generate: text from the shipped model
    assert _installed(venv, "sqlalchemy", "fastapi", "onnx", "agent", "firmware") == ["agent", "firmware"]
    # the controller's commands say which extra they need, in one line
    for args in (("fleet", "ls"), ("serve",)):
        r = _cmd(venv, "fleetgen", *args, "--state-dir", str(tmp_path / "ctl"), cwd=tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert "needs the 'controller' extra" in lines[0] and "fleetgen[controller]" in lines[0]
    assert not (tmp_path / "ctl").exists()
    assert _cmd(venv, "fleetgen", "--help", cwd=tmp_path).returncode == 0


def test_controller_install(dist: Dist, tmp_path: Path) -> None:
    venv, _ = _run_guide("On the controller", dist, tmp_path)
    assert (tmp_path / "srv-repo" / "metadata" / "1.root.json").is_file()  # keys init ran
    # only what the controller uses: no web stack yet, no release tooling
    assert _installed(venv, "sqlalchemy", "psycopg", "amqtt", "fastapi", "uvicorn", "onnx", "onnx_ir") == [
        "sqlalchemy", "psycopg", "amqtt"]
    r = _cmd(venv, "fleetgen", "fleet", "ls", "--state-dir", str(tmp_path / "ctl"), cwd=tmp_path)
    assert r.returncode == 1 and "no controller database" in r.stderr and not (tmp_path / "ctl").exists()
    src = tmp_path / "export"
    src.mkdir()
    for f in ("model.onnx", "config.json", "tokenizer.json"):
        shutil.copy2(REPO / "models" / "text" / "austen-3m" / f, src / f)
    r = _cmd(venv, "fleetgen", "model", "import", str(src), "-o", str(tmp_path / "out"), cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "needs the 'release' extra" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()
