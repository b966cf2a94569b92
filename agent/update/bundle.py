"""The `.fgb` model bundle (DESIGN §5): build, read, verify and unpack, in one streamed pass.

A bundle is an uncompressed POSIX tar. Its first member is `manifest.json` (the model
manifest of `agent.manifest`, the same document a model folder holds); then every file
the manifest lists, each exactly once, as a regular file whose size and sha256 are the
manifest's. Nothing else: no directories, links, devices, absolute paths or `..`.

`verify_bundle` reads the file once: it hashes the whole file (the TUF target hash) and,
in the same pass, parses the tar, checks every member against the manifest and (when
`dest` is given) writes it out. Parsing happens before the whole-file hash is known, so
every size is bounded up front and `dest` must be a fresh directory that the caller
discards unless `verify_bundle` returns (agent.update.store does exactly that).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec

from agent.errors import UsageError
from agent.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    ManifestError,
    ModelManifest,
    SelfTest,
    check_relative_path,
    encode_manifest,
    load_manifest,
    parse_manifest,
)
from agent.trust.errors import (
    BundleFormatError,
    HashMismatchError,
    LengthExceededError,
    LengthMismatchError,
)

BUNDLE_SUFFIX = ".fgb"
_BLOCK = 1024 * 1024
GiB = 1024**3
# A pax record for a member name of at most 255 characters fits in 1 KiB. tarfile reads an
# extended header whole into memory and (CPython < 3.11.10, CVE-2024-6232) parses it with a
# regex quadratic in its size: a 64 KiB header costs seconds, a 1 MiB one hours.
_MAX_EXTENDED_HEADER = 1024


@dataclass(frozen=True, slots=True)
class BundleLimits:
    """Upper bounds checked before any byte of a member is read."""

    max_members: int = 257  # manifest.json + the manifest's 256 files at most
    max_member_bytes: int = 16 * GiB
    max_total_bytes: int = 32 * GiB


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    manifest: ModelManifest
    length: int
    sha256: str


class _Digest:
    """sha256 computed on a helper thread (hashlib releases the GIL), so that the
    whole-file hash and the member hashes of one pass run on two cores. At most
    `depth` blocks wait in between, which bounds the memory it adds."""

    def __init__(self, depth: int = 8) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="bundle-sha256", daemon=True)
        self._thread.start()
        self._hex: str | None = None

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            self._hash.update(block)

    def update(self, block: bytes) -> None:
        self._queue.put(block)

    def hexdigest(self) -> str:
        if self._hex is None:
            self.close()
            self._hex = self._hash.hexdigest()
        return self._hex

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class _HashingReader:
    """Read-through wrapper: hashes and counts every byte, and never lets more than
    `limit` bytes through (reading one byte past it raises LengthExceededError)."""

    def __init__(self, source: BinaryIO, limit: int | None, origin: str) -> None:
        self._source = source
        self._limit = limit
        self._origin = origin
        self.digest = _Digest()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = _BLOCK
        if self._limit is not None:
            size = min(size, self._limit + 1 - self.count)
        data = self._source.read(size)
        self.count += len(data)
        if self._limit is not None and self.count > self._limit:
            raise LengthExceededError(
                f"{self._origin}: longer than the {self._limit} bytes signed metadata declares"
            )
        if data:
            self.digest.update(data)
        return data

    def drain(self) -> None:
        while self.read(_BLOCK):
            pass


class _RefusedHeader(tarfile.HeaderError):
    """A tar header we refuse before tarfile acts on it (propagates as a TarError)."""


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile's header parsing minus what a bundle never needs and an attacker could use
    to make the parser read or allocate without bound before any member is checked: GNU
    long names and sparse maps (read whole, sized by the header), global pax headers, and
    extended headers over `_MAX_EXTENDED_HEADER` bytes."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _REFUSED_HEADER_TYPES:
            raise _RefusedHeader(f"header type {self.type!r} is not allowed in a bundle")
        if self.type == tarfile.XHDTYPE and self.size > _MAX_EXTENDED_HEADER:
            raise _RefusedHeader(f"extended header of {self.size} bytes (limit {_MAX_EXTENDED_HEADER})")
        member: tarfile.TarInfo = super()._proc_member(archive)  # type: ignore[misc]
        return member

    def _refuse_sparse(self, *args: object) -> None:
        raise _RefusedHeader("sparse members are not allowed in a bundle")

    # Called from inside pax processing, which would read the sparse map whole.
    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


_REFUSED_HEADER_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.GNUTYPE_SPARSE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


def _member_name(info: tarfile.TarInfo, origin: str) -> str:
    if not info.isreg() or info.issparse():
        raise BundleFormatError(
            f"{origin}: member {info.name!r} is not a regular file (links, directories "
            "and devices are refused)"
        )
    if len(info.name) > 255 or any(ord(c) < 0x20 for c in info.name):
        raise BundleFormatError(f"{origin}: member name {info.name!r} is not allowed")
    try:
        return check_relative_path(info.name)
    except ManifestError as e:
        raise BundleFormatError(f"{origin}: member {e}") from None


def _open_new(dest: Path, rel: str) -> int:
    path = dest / rel
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.parent.resolve().is_relative_to(dest.resolve()):
            raise BundleFormatError(f"member {rel!r} escapes {dest}")
        return os.open(path, flags, 0o644)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        # A manifest may list both `a` and `a/b`: one of them cannot be a file.
        raise BundleFormatError(f"member {rel!r} collides with another member") from None


def _copy_member(stream: BinaryIO, size: int, rel: str, dest: Path | None, origin: str) -> str:
    """Read exactly `size` bytes of a member, hash them, write them under `dest`."""
    digest = hashlib.sha256()
    fd = _open_new(dest, rel) if dest is not None else None
    try:
        left = size
        while left:
            chunk = stream.read(min(_BLOCK, left))
            if not chunk:
                raise BundleFormatError(f"{origin}: member {rel!r} is truncated")
            left -= len(chunk)
            digest.update(chunk)
            if fd is not None:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        if fd is not None:
            os.fsync(fd)
    finally:
        if fd is not None:
            os.close(fd)
    return digest.hexdigest()


def _read_manifest_member(
    tf: tarfile.TarFile, info: tarfile.TarInfo, origin: str, dest: Path | None = None
) -> ModelManifest:
    """Parse the manifest member; with `dest`, also write it there (a model folder holds it)."""
    if info.size > MAX_MANIFEST_BYTES:
        raise LengthExceededError(
            f"{origin}: {MANIFEST_NAME} is {info.size} bytes, limit {MAX_MANIFEST_BYTES}"
        )
    stream = tf.extractfile(info)
    if stream is None:  # pragma: no cover - _member_name already refused non-files
        raise BundleFormatError(f"{origin}: {MANIFEST_NAME} is not a file")
    data = stream.read(info.size)
    if len(data) != info.size:
        raise BundleFormatError(f"{origin}: {MANIFEST_NAME} is truncated")
    try:
        manifest = parse_manifest(data, f"{origin}:{MANIFEST_NAME}")
    except ManifestError as e:
        raise BundleFormatError(str(e)) from None
    if dest is not None:
        fd = _open_new(dest, MANIFEST_NAME)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    return manifest


def _open_stream(reader: _HashingReader, origin: str) -> tarfile.TarFile:
    """A forward-only tar reader over `reader` (never seeks, reads 1 MiB at a time)."""
    try:
        return tarfile.open(  # type: ignore[call-overload]
            fileobj=reader, mode="r|", bufsize=_BLOCK, tarinfo=_StrictTarInfo
        )
    except tarfile.TarError as e:
        raise BundleFormatError(f"{origin}: not a valid bundle tar ({e})") from None


def _members(tf: tarfile.TarFile, origin: str) -> Iterator[tarfile.TarInfo]:
    try:
        yield from tf
    except tarfile.TarError as e:
        raise BundleFormatError(f"{origin}: not a valid bundle tar ({e})") from None


def verify_bundle(
    source: BinaryIO,
    *,
    origin: str = "bundle",
    expected_length: int | None = None,
    expected_sha256: str | None = None,
    dest: Path | None = None,
    limits: BundleLimits = BundleLimits(),
    on_manifest: Callable[[ModelManifest], None] | None = None,
) -> VerifiedBundle:
    """Verify a bundle read from `source` in one pass; unpack it into `dest` if given.

    `expected_length` / `expected_sha256` come from signed metadata (the TUF target):
    reading stops one byte past the length, and the whole-file hash must match.
    `on_manifest` is called as soon as the manifest is read (e.g. a board check), so a
    bundle for another board is refused before its files are read.
    Raises a TrustError subclass naming the failed check; on error `dest` holds junk.
    """
    reader = _HashingReader(source, expected_length, origin)
    try:
        return _verify(reader, origin, expected_length, expected_sha256, dest, limits, on_manifest)
    finally:
        reader.digest.close()


def _verify(
    reader: _HashingReader,
    origin: str,
    expected_length: int | None,
    expected_sha256: str | None,
    dest: Path | None,
    limits: BundleLimits,
    on_manifest: Callable[[ModelManifest], None] | None,
) -> VerifiedBundle:
    try:
        with _tar_errors(origin):
            manifest = _walk_members(reader, origin, dest, limits, on_manifest)
    except (BundleFormatError, HashMismatchError, LengthMismatchError) as e:
        if expected_sha256 is None or isinstance(e, LengthExceededError):
            raise
        # Content that is not what was signed is a hash mismatch, whatever broke first.
        reader.drain()
        digest = reader.digest.hexdigest()
        if digest != expected_sha256:
            raise HashMismatchError(f"{origin}: sha256 {digest} != signed {expected_sha256}") from e
        raise
    reader.drain()
    if expected_length is not None and reader.count != expected_length:
        raise LengthMismatchError(
            f"{origin}: {reader.count} bytes, signed metadata declares {expected_length}"
        )
    digest = reader.digest.hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise HashMismatchError(f"{origin}: sha256 {digest} != signed {expected_sha256}")
    return VerifiedBundle(manifest=manifest, length=reader.count, sha256=digest)


# What tarfile may raise on hostile input besides TarError (found by fuzzing).
_PARSE_ERRORS = (tarfile.TarError, UnicodeError, ValueError, EOFError, OverflowError)


@contextlib.contextmanager
def _tar_errors(origin: str) -> Iterator[None]:
    try:
        yield
    except _PARSE_ERRORS as e:
        raise BundleFormatError(f"{origin}: not a valid bundle tar ({type(e).__name__}: {e})") from None


def _walk_members(
    reader: _HashingReader,
    origin: str,
    dest: Path | None,
    limits: BundleLimits,
    on_manifest: Callable[[ModelManifest], None] | None,
) -> ModelManifest:
    tf = _open_stream(reader, origin)
    manifest: ModelManifest | None = None
    expected: dict[str, tuple[int, str]] = {}
    seen: set[str] = set()
    total = 0
    with contextlib.closing(tf):
        for count, info in enumerate(_members(tf, origin), start=1):
            if count > limits.max_members:
                raise BundleFormatError(f"{origin}: more than {limits.max_members} members")
            name = _member_name(info, origin)
            if manifest is None:
                if name != MANIFEST_NAME:
                    raise BundleFormatError(
                        f"{origin}: first member must be {MANIFEST_NAME}, got {name!r}"
                    )
                manifest = _read_manifest_member(tf, info, origin, dest)
                if on_manifest is not None:
                    on_manifest(manifest)
                expected = {f.path: (f.length, f.sha256) for f in manifest.files}
                continue
            if name not in expected:
                raise BundleFormatError(f"{origin}: member {name!r} is not listed in the manifest")
            if name in seen:
                raise BundleFormatError(f"{origin}: member {name!r} appears twice")
            seen.add(name)
            length, sha256 = expected[name]
            if info.size != length:
                raise LengthMismatchError(
                    f"{origin}: member {name!r} is {info.size} bytes, manifest says {length}"
                )
            total += info.size
            if info.size > limits.max_member_bytes or total > limits.max_total_bytes:
                raise LengthExceededError(f"{origin}: member {name!r} exceeds the size limits")
            stream = tf.extractfile(info)
            assert stream is not None
            digest = _copy_member(stream, info.size, name, dest, origin)  # type: ignore[arg-type]
            if digest != sha256:
                raise HashMismatchError(
                    f"{origin}: member {name!r} sha256 {digest} != manifest {sha256}"
                )
    if manifest is None:
        raise BundleFormatError(f"{origin}: empty bundle (no {MANIFEST_NAME})")
    if missing := sorted(set(expected) - seen):
        raise BundleFormatError(
            f"{origin}: missing members the manifest lists: {', '.join(missing)}"
        )
    return manifest


def verify_bundle_file(path: Path, **kwargs: object) -> VerifiedBundle:
    with open(path, "rb", buffering=0) as f:
        return verify_bundle(f, origin=str(path), **kwargs)  # type: ignore[arg-type]


def read_manifest(path: Path) -> ModelManifest:
    """The manifest of a bundle file (first member only; nothing else is checked)."""
    with open(path, "rb") as f:
        reader = _HashingReader(f, None, str(path))
        try:
            tf = _open_stream(reader, str(path))
            with contextlib.closing(tf):
                for info in _members(tf, str(path)):
                    if _member_name(info, str(path)) != MANIFEST_NAME:
                        break
                    return _read_manifest_member(tf, info, str(path))
        except _PARSE_ERRORS as e:
            raise BundleFormatError(f"{path}: not a valid bundle tar ({type(e).__name__}: {e})") from None
        finally:
            reader.digest.close()
    raise BundleFormatError(f"{path}: first member must be {MANIFEST_NAME}")


def default_bundle_name(manifest: ModelManifest) -> str:
    return f"{manifest.name}-{manifest.version}{BUNDLE_SUFFIX}"


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _open_member(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as e:
        raise ManifestError(f"cannot read {path}: {e.strerror}") from None


def build_bundle(
    model_dir: Path, out: Path, *, name: str | None = None, version: str | None = None,
    self_test: SelfTest | None = None,
) -> VerifiedBundle:
    """Pack a model folder into `out` (written atomically, reproducible bytes).

    Name and version default to the folder's manifest, the self-test too (`fleetgen bundle
    build` passes one with the probe perplexity it measured). Refuses a folder that lacks a
    file the manifest needs, naming it; the written bundle is verified before it is kept.
    """
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    missing = [f.path for f in manifest.files if not (model_dir / f.path).is_file()]
    if missing:
        raise ManifestError(f"{model_dir}: missing files the manifest lists: {', '.join(missing)}")
    changes: dict[str, object] = {k: v for k, v in (("name", name), ("version", version)) if v is not None}
    if self_test is not None:
        changes["self_test"] = self_test
    if changes:
        try:
            manifest = msgspec.convert(
                msgspec.to_builtins(msgspec.structs.replace(manifest, **changes)), ModelManifest
            )
        except msgspec.ValidationError as e:
            raise ManifestError(f"bundle name/version: {e}") from None
    data = encode_manifest(manifest) + b"\n"
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            tf.addfile(_tarinfo(MANIFEST_NAME, len(data)), io.BytesIO(data))
            for entry in manifest.files:
                with _open_member(model_dir / entry.path) as member:
                    # tarfile copies exactly `size` bytes: a file that grew would be packed
                    # as its old prefix, which matches the manifest's hash. Refuse it here.
                    length = os.fstat(member.fileno()).st_size
                    if length != entry.length:
                        raise LengthMismatchError(
                            f"{entry.path} is {length} bytes, the manifest says {entry.length}"
                        )
                    tf.addfile(_tarinfo(entry.path, entry.length), member)
        with open(tmp, "rb", buffering=0) as f:
            verified = verify_bundle(f, origin=str(model_dir))
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except (HashMismatchError, LengthMismatchError) as e:
        raise ManifestError(f"{model_dir}: files do not match the manifest ({e})") from None
    except OSError as e:  # members are opened by _open_member: what is left is the output's
        raise UsageError(f"cannot write bundle {out}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return verified
