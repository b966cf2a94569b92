"""`fleetgen bundle build`: every refusal says its real reason (issue 8, item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main as fleetgen
from tests.trust.models import make_model_dir


def _build(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = fleetgen(["bundle", "build", *args])
    return code, capsys.readouterr().err.strip().splitlines()


def test_output_that_is_a_directory_is_refused_as_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model_dir(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").mkdir()
    for out in (".", "existing", str(tmp_path / "existing") + "/", ".."):
        code, err = _build(capsys, str(model), "-o", out)
        assert code == 2, out
        assert len(err) == 1 and "is a directory" in err[0] and "manifest" not in err[0], err
    assert list((tmp_path / "existing").iterdir()) == []


def test_output_in_a_missing_directory_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_model_dir(tmp_path / "models")
    code, err = _build(capsys, str(model), "-o", str(tmp_path / "nonexistent" / "x.fgb"))
    assert code == 2
    assert len(err) == 1 and f"directory {tmp_path / 'nonexistent'} does not exist" in err[0], err


def test_output_under_a_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_model_dir(tmp_path / "models")
    (tmp_path / "plain").write_text("")
    code, err = _build(capsys, str(model), "-o", str(tmp_path / "plain" / "x.fgb"))
    assert code == 2
    assert len(err) == 1 and f"{tmp_path / 'plain'} is not a directory" in err[0], err


@pytest.mark.parametrize("change", ["grow", "shrink", "flip"])
def test_a_file_that_changed_after_the_manifest_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str
) -> None:
    model = make_model_dir(tmp_path / "models")
    card = model / "tokenizer.json"
    data = card.read_bytes()
    if change == "grow":
        card.write_bytes(data + b"\nappended after the manifest was written\n")
    elif change == "shrink":
        card.write_bytes(data[:-2])
    else:
        card.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    out = tmp_path / "x.fgb"
    code, err = _build(capsys, str(model), "-o", str(out))
    # a model folder that does not match its manifest is bad input (exit 2), as for --model
    assert code == 2, err
    assert len(err) == 1 and "tokenizer.json" in err[0] and "do not match the manifest" in err[0], err
    if change != "flip":
        assert f"is {len(card.read_bytes())} bytes, the manifest says {len(data)}" in err[0]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".x.fgb")] == []  # no temp left


def test_a_good_folder_still_builds(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model_dir(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    assert fleetgen(["bundle", "build", str(model)]) == 0
    assert (tmp_path / "tiny-1.0.0.fgb").is_file()
    assert fleetgen(["bundle", "build", str(model), "-o", "./named.fgb"]) == 0
    assert (tmp_path / "named.fgb").is_file()
