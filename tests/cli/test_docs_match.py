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


# -- every command of the README's guides is run by a test or by the demo (issue 15) -----------

_CORPUS_DIRS = ("tests", "controller/demo")


def _guide_commands() -> list[str]:
    """Every command line of the sh blocks from `## The two commands` to `## Development`."""
    text = README[README.index("## The two commands"):README.index("\n## Development")]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.split(r"(?:^|\s+)#\s", line, maxsplit=1)[0].strip()
            for part in re.split(r";|&&|\|\|?", line):
                part = part.strip().removeprefix("(").removesuffix(")").strip()
                part = re.sub(r"^(sudo|/opt/fleetgen/venv/bin/|\S+=\S+\s+)+", "", part)
                if part:
                    commands.append(part)
    return commands


def _subcommand_path(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the subcommand words as the real parser reads them, the long options given)."""
    import argparse

    from agent.cli import build_parser as agent_parser
    from controller.cli import build_parser as controller_parser

    parser = controller_parser() if argv[0] == "fleetgen" else agent_parser()
    path = []
    for word in argv[1:]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        path.append(word)
        parser = subs[0].choices[word]
    flags = [w.split("=", 1)[0] for w in argv[1:] if w.startswith("--")]
    return path, flags


def _corpus() -> dict[str, str]:
    files: dict[str, str] = {}
    for d in _CORPUS_DIRS:
        for path in (REPO / d).rglob("*.py"):
            if path.name != "test_docs_match.py":
                files[str(path.relative_to(REPO))] = path.read_text(errors="replace")
    return files


def _runs(text: str, path: list[str]) -> bool:
    """The subcommand appears as argv (["rollout", "start", ...]) or as a typed command."""
    quoted = r",\s*".join(rf"[\"']{re.escape(w)}[\"']" for w in path)
    return bool(re.search(quoted, text)) or " ".join(path) in text


def test_every_command_in_the_guides_is_exercised_by_a_test_or_the_demo() -> None:
    corpus = _corpus()
    missing = []
    for command in _guide_commands():
        argv = shlex.split(command)
        if argv[0] in ("fleetgen", "fleetgen-agent"):
            path, flags = _subcommand_path(argv)
            assert path, f"README: {command!r} names no subcommand"
            where = [name for name, text in corpus.items() if _runs(text, path)]
            unexercised = [f for f in flags if not any(f in corpus[name] for name in where)]
            if not where or unexercised:
                missing.append(f"{command}  (no test runs {' '.join(path)!r}"
                               + (f" with {', '.join(unexercised)}" if where else "") + ")")
        elif argv[0] == "curl":
            url = next(w for w in argv if "://" in w or w.startswith("localhost"))
            route = re.sub(r"^\w+://[^/]+|^localhost:\d+", "", url).split("?", 1)[0]
            # ids in the path (kiosk-042) match any id, or an f-string's {device}
            pattern = "/".join("[^/\"']+" if re.search(r"\d", seg) else re.escape(seg) for seg in route.split("/"))
            if not any(re.search(pattern, text) for text in corpus.values()):
                missing.append(f"{command}  (no test requests {route})")
        elif argv[0] == "make":
            assert (REPO / "Makefile").read_text().count(f"\n{argv[1]}:") == 1, command
        elif argv[0] in ("python3", "pip"):
            pass  # the install guide's venv and pip lines: tests/packaging/test_install_guide.py runs them
        elif argv[0] in ("umask", "head", "base64"):
            pass  # the passphrase file: test_readme_creates_the_passphrase_file_it_uses runs them
        else:
            missing.append(f"{command}  (not a command this test knows how to check)")
    assert not missing, "README guide commands no test or demo step runs:\n" + "\n".join(missing)
