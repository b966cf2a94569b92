"""What the docs say is what the commands do (issue 8, item 8)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from agent.cli import main as agent_main
from controller.cli import main as fleetgen
from tests.cli.support import REPO
from tests.trust.models import make_model_dir

README = (REPO / "README.md").read_text()


def test_external_data_has_the_name_the_runtime_guide_gives(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from models.quantize import externalize, model_files, quantize_int4, quantize_int8

    src = REPO / "models" / "text" / "austen-3m" / "model.onnx"
    written = set()
    for i, step in enumerate((quantize_int8, quantize_int4, externalize)):
        dst = tmp_path / str(i) / "model.onnx"
        step(src, dst, external=True)
        written |= set(model_files(dst)) - {"model.onnx"}
    assert written == {"model.onnx.data"}  # one name, whatever wrote it
    guide = (REPO / "docs" / "runtime.md").read_text()
    assert "`model.onnx.data`" in guide


def test_readme_provisions_from_the_file_keys_init_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init = re.search(r"^fleetgen keys init --repo (\S+)", README, re.M)
    provision = re.search(r"^fleetgen-agent provision --root (\S+)", README, re.M)
    assert init and provision
    assert not Path(init.group(1)).is_absolute() and not Path(provision.group(1)).is_absolute()
    repo = tmp_path / init.group(1)
    assert fleetgen(["keys", "init", "--repo", str(repo)]) == 0
    capsys.readouterr()
    root = tmp_path / provision.group(1)
    assert root.is_file(), f"README provisions from {provision.group(1)}, which keys init did not write"
    assert agent_main(["provision", "--root", str(root), "--state-dir", str(tmp_path / "state")]) == 0


def test_readme_creates_the_passphrase_file_it_uses(tmp_path: Path) -> None:
    """Run the README's lines up to `keys init --passphrase-file` as a shell would."""
    block = README[README.index("### Signed model bundles"):]
    lines = []
    for line in block.splitlines():
        if line.startswith("fleetgen keys init") or lines or "> pass" in line:
            lines.append(line.split("  #")[0])
        if line.startswith("fleetgen keys init"):
            break
    assert lines and lines[-1].startswith("fleetgen keys init"), lines
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    env.pop("FLEETGEN_PASSPHRASE", None)
    proc = subprocess.run(["bash", "-euc", "\n".join(lines)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "NOT encrypted" not in proc.stderr  # the passphrase file existed and was used
    assert (tmp_path / "pass").stat().st_mode & 0o077 == 0  # created private
    keys = list((tmp_path / "repo" / "keys" / "offline").glob("*.pem"))
    assert keys and all(b"ENCRYPTED" in k.read_bytes() for k in keys)
    assert shlex.split(lines[-1])[-1] == "pass"


def test_a_tampered_bundle_exits_1_from_every_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, usb = tmp_path / "repo", tmp_path / "usb"
    assert fleetgen(["keys", "init", "--repo", str(repo)]) == 0
    good = tmp_path / "tiny-1.0.0.fgb"
    assert fleetgen(["bundle", "build", str(make_model_dir(tmp_path / "m")), "-o", str(good)]) == 0
    assert fleetgen(["bundle", "publish", str(good), "--repo", str(repo)]) == 0
    assert fleetgen(["bundle", "export", "--repo", str(repo), "--to", str(usb)]) == 0
    bad = tmp_path / "evil" / "tiny-1.0.0.fgb"
    bad.parent.mkdir()
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 1  # inside model.onnx
    bad.write_bytes(bytes(data))
    capsys.readouterr()
    codes = {
        "inspect": fleetgen(["bundle", "inspect", str(bad)]),
        "generate": agent_main(["generate", "--bundle", str(bad), "--state-dir", str(tmp_path / "s1"), "hi"]),
        "install-bundle": agent_main(["install-bundle", str(bad), "--metadata", str(usb), "--trust-root",
                                      "--board", "generic", "--state-dir", str(tmp_path / "s2")]),
    }
    err = capsys.readouterr().err.strip().splitlines()
    assert codes == {"inspect": 1, "generate": 1, "install-bundle": 1}, err
    assert len(err) == 3 and all("sha256" in line or "hash" in line for line in err), err
    trust = (REPO / "docs" / "trust.md").read_text()
    assert "a tampered bundle\nexits 1" in trust or "a tampered bundle exits 1" in trust.replace("\n", " ")
