"""The .fgb format: what `build` writes, and every malformed bundle `verify` refuses."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from agent.manifest import ManifestError, load_manifest
from agent.trust.errors import BundleFormatError, HashMismatchError, LengthMismatchError, TrustError
from agent.update.bundle import build_bundle, read_manifest, verify_bundle, verify_bundle_file
from agent.update.store import BundleStore
from tests.trust.models import make_model_dir


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "models")


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def _reg(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _members(model: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    m = load_manifest(model)
    out = [(_reg("manifest.json"), (model / "manifest.json").read_bytes())]
    out += [(_reg(f.path), (model / f.path).read_bytes()) for f in m.files]
    return out


def _verify(data: bytes, dest: Path | None = None) -> None:
    verify_bundle(io.BytesIO(data), dest=dest)


def test_build_is_reproducible_and_verifies(model: Path, tmp_path: Path) -> None:
    a = build_bundle(model, tmp_path / "a.fgb")
    b = build_bundle(model, tmp_path / "b.fgb")
    assert (tmp_path / "a.fgb").read_bytes() == (tmp_path / "b.fgb").read_bytes()
    assert a.sha256 == b.sha256
    assert verify_bundle_file(tmp_path / "a.fgb").manifest == load_manifest(model)
    assert read_manifest(tmp_path / "a.fgb").name == "tiny"


def test_build_overrides_name_and_version(model: Path, tmp_path: Path) -> None:
    v = build_bundle(model, tmp_path / "x.fgb", name="other", version="9.9")
    assert (v.manifest.name, v.manifest.version) == ("other", "9.9")


def test_build_refuses_a_folder_missing_files_and_names_them(model: Path, tmp_path: Path) -> None:
    (model / "tokenizer.json").unlink()
    with pytest.raises(ManifestError, match=r"tokenizer\.json"):
        build_bundle(model, tmp_path / "x.fgb")
    assert not (tmp_path / "x.fgb").exists()


def test_build_refuses_files_that_do_not_match_the_manifest(model: Path, tmp_path: Path) -> None:
    (model / "model.onnx").write_bytes(b"changed after the manifest was written")
    with pytest.raises(ManifestError):
        build_bundle(model, tmp_path / "x.fgb")


def test_a_well_formed_tar_unpacks(model: Path, tmp_path: Path) -> None:
    _verify(_tar(_members(model)), tmp_path / "out")
    assert (tmp_path / "out" / "extra" / "defaults.json").is_file()


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/../../b", "./model.onnx", "trust\\x"])
def test_member_paths_that_escape_are_refused(model: Path, tmp_path: Path, name: str) -> None:
    members = _members(model)
    members.insert(1, (_reg(name), b"x"))
    with pytest.raises(BundleFormatError):
        _verify(_tar(members), tmp_path / "out")
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_links_directories_and_devices_are_refused(model: Path, kind: bytes) -> None:
    members = _members(model)
    info = _reg("model.onnx")
    info.type = kind
    info.linkname = "/etc/shadow"
    members[1] = (info, b"")
    with pytest.raises(BundleFormatError, match="not a regular file"):
        _verify(_tar(members))


def test_member_not_in_the_manifest_is_refused(model: Path) -> None:
    members = [*_members(model), (_reg("surprise.bin"), b"boo")]
    with pytest.raises(BundleFormatError, match="not listed"):
        _verify(_tar(members))


def test_missing_member_is_refused(model: Path) -> None:
    with pytest.raises(BundleFormatError, match="missing members"):
        _verify(_tar(_members(model)[:-1]))


def test_duplicate_member_is_refused(model: Path) -> None:
    members = _members(model)
    with pytest.raises(BundleFormatError, match="twice"):
        _verify(_tar([*members, members[1]]))


def test_manifest_must_come_first(model: Path) -> None:
    members = _members(model)
    with pytest.raises(BundleFormatError, match="first member"):
        _verify(_tar(members[1:] + members[:1]))


def test_member_with_other_content_is_refused(model: Path) -> None:
    members = _members(model)
    info, data = members[2]
    members[2] = (info, bytes([data[0] ^ 1]) + data[1:])
    with pytest.raises(HashMismatchError):
        _verify(_tar(members))


def test_member_with_other_size_is_refused(model: Path) -> None:
    members = _members(model)
    info, data = members[2]
    members[2] = (info, data + b"x")
    with pytest.raises(LengthMismatchError):
        _verify(_tar(members))


def test_garbage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleFormatError):
        _verify(b"\x00" * 100 + b"not a tar" * 1000)
    with pytest.raises(BundleFormatError):
        _verify(b"")


def test_a_refused_install_leaves_current_untouched(model: Path, tmp_path: Path) -> None:
    good = build_bundle(model, tmp_path / "good.fgb")
    store = BundleStore(tmp_path / "state")
    with open(tmp_path / "good.fgb", "rb") as f:
        store.install(f, origin="good", expected_length=good.length, expected_sha256=good.sha256, board=None)
    before = store.current()
    members = [*_members(model), (_reg("surprise.bin"), b"boo")]
    with pytest.raises(TrustError):
        store.install(
            io.BytesIO(_tar(members)), origin="bad", expected_length=10**6, expected_sha256="0" * 64, board=None
        )
    assert store.current() == before
    assert [p.name for p in store.bundles.iterdir()] == [before.name]  # type: ignore[union-attr]


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


class _Endless(io.RawIOBase):
    """`head`, then digits for ever: what a hostile header claims to be followed by."""

    def __init__(self, head: bytes) -> None:
        self.head, self.sent = head, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = 1 << 20 if size is None or size < 0 else size
        data = self.head[self.sent : self.sent + size] or b"1" * size
        self.sent += len(data)
        return data


@pytest.mark.parametrize(
    "kind", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK]
)
def test_a_huge_extended_header_is_refused_before_it_is_read(kind: bytes) -> None:
    # tarfile reads such a header whole, and parses a pax one with a regex quadratic in its
    # size (CVE-2024-6232): 200 MB of it would take memory and hours of CPU.
    source = _Endless(_header("././@LongHeader", kind, 200 * 1024 * 1024))
    with pytest.raises(BundleFormatError, match="header"):
        verify_bundle(source)  # type: ignore[arg-type]
    assert source.sent <= 2 << 20  # refused on the header, not after reading what it announced


def test_a_sparse_member_announced_in_a_pax_header_is_refused(model: Path) -> None:
    members = _members(model)
    info = members[1][0]
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": info.name}
    with pytest.raises(BundleFormatError, match="sparse"):
        _verify(_tar(members))


def test_members_that_collide_as_file_and_folder_are_refused(model: Path, tmp_path: Path) -> None:
    # A manifest may list both `extra` and `extra/defaults.json`; only one can be a file.
    import hashlib

    import msgspec

    from agent.manifest import FileEntry, encode_manifest

    m = load_manifest(model)
    blob = b"a file where a folder must be"
    clash = FileEntry(path="extra", length=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    manifest = encode_manifest(msgspec.structs.replace(m, files=[*m.files, clash]))
    members = [(_reg("manifest.json"), manifest), *_members(model)[1:], (_reg("extra"), blob)]
    with pytest.raises(BundleFormatError, match="collides"):
        _verify(_tar(members), tmp_path / "out")
