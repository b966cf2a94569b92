"""A minimal reader for R lazy-load data databases (`data/Rdata.rdx` + `Rdata.rdb`).

The text corpus ships inside a Debian package of an R data package; installing R just
to read six character vectors would pull in hundreds of megabytes, so this reads R's
XDR serialization format directly. It handles what data packages hold (vectors,
pairlists, attributes, environments by reference) and raises on anything else.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

_NILVALUE, _REF, _GLOBALENV, _UNBOUND, _MISSING, _BASENS = 254, 255, 253, 252, 251, 250
_NAMESPACE, _PACKAGE, _PERSIST, _EMPTYENV, _BASEENV = 249, 248, 247, 242, 241
_ATTRLANG, _ATTRLIST, _ALTREP = 240, 239, 238
_SYM, _LIST, _CLO, _ENV, _PROM, _LANG, _DOT = 1, 2, 3, 4, 5, 6, 17
_CHAR, _LGL, _INT, _REAL, _CPLX, _STR, _VEC, _EXPR, _RAW = 9, 10, 13, 14, 15, 16, 19, 20, 24


class RDataError(ValueError):
    """The file is not R serialization data this reader understands."""


@dataclass
class RObject:
    """A decoded R value: `value` is a list for vectors, `attributes` a name → value map."""

    kind: int
    value: object
    attributes: dict[str, object] = field(default_factory=dict)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.refs: list[object] = []

    def _int(self) -> int:
        (v,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return int(v)

    def _bytes(self, n: int) -> bytes:
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def header(self) -> None:
        if self._bytes(2) != b"X\n":
            raise RDataError("only XDR ('X') serialization is supported")
        version = self._int()
        self._int()
        self._int()
        if version == 3:
            self._bytes(self._int())

    def _length(self) -> int:
        n = self._int()
        if n == -1:
            hi, lo = self._int(), self._int()
            n = (hi << 32) + lo
        return n

    def item(self) -> object:
        flags = self._int()
        kind = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == _NILVALUE:
            return None
        if kind in (_GLOBALENV, _UNBOUND, _MISSING, _BASENS, _EMPTYENV, _BASEENV):
            return RObject(kind, None)
        if kind == _REF:
            index = flags >> 8 or self._int()
            return self.refs[index - 1]
        if kind in (_NAMESPACE, _PACKAGE, _PERSIST):
            self._int()
            names = [self.item() for _ in range(self._int())]
            obj = RObject(kind, names)
            self.refs.append(obj)
            return obj
        if kind == _SYM:
            obj = RObject(kind, self.item())
            self.refs.append(obj)
            return obj
        if kind == _ENV:
            obj = RObject(kind, None)
            self.refs.append(obj)
            self._int()
            enclos, frame, hashtab, attrib = self.item(), self.item(), self.item(), self.item()
            obj.value = (enclos, frame, hashtab)
            obj.attributes = _pairlist_dict(attrib)
            return obj
        if kind in (_LIST, _LANG, _CLO, _PROM, _DOT, _ATTRLANG, _ATTRLIST):
            attrib = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            car = self.item()
            cdr = self.item()
            return RObject(kind, (tag, car, cdr), _pairlist_dict(attrib))
        if kind == _CHAR:
            n = self._int()
            return None if n == -1 else self._bytes(n).decode("utf-8", "replace")
        obj = self._vector(kind)
        if has_attr:
            obj.attributes = _pairlist_dict(self.item())
        return obj

    def _vector(self, kind: int) -> RObject:
        n = self._length()
        if kind in (_LGL, _INT):
            value: object = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind == _REAL:
            value = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        elif kind == _CPLX:
            value = list(struct.unpack_from(f">{2 * n}d", self.data, self.pos))
            self.pos += 16 * n
        elif kind == _RAW:
            value = self._bytes(n)
        elif kind in (_STR, _VEC, _EXPR):
            value = [self.item() for _ in range(n)]
        else:
            raise RDataError(f"unsupported R object type {kind} at byte {self.pos}")
        return RObject(kind, value)


def _symbol_name(tag: object) -> str:
    if isinstance(tag, RObject) and tag.kind == _SYM and isinstance(tag.value, str):
        return tag.value
    return ""


def _pairlist_dict(node: object) -> dict[str, object]:
    out: dict[str, object] = {}
    while isinstance(node, RObject) and node.kind in (_LIST, _ATTRLIST):
        tag, car, node = node.value  # type: ignore[misc]
        out[_symbol_name(tag)] = car
    return out


def unserialize(data: bytes) -> object:
    reader = _Reader(data)
    reader.header()
    return reader.item()


def read_lazyload_db(data_dir: Path) -> dict[str, object]:
    """All objects of an R data package's lazy-load database, by name."""
    index = unserialize(gzip.decompress((data_dir / "Rdata.rdx").read_bytes()))
    if not isinstance(index, RObject):
        raise RDataError(f"{data_dir}/Rdata.rdx: unexpected index {index!r}")
    variables = index.value[0] if isinstance(index.value, list) else None
    if not isinstance(variables, RObject) or not isinstance(variables.value, list):
        raise RDataError(f"{data_dir}/Rdata.rdx: no variables list")
    names = variables.attributes.get("names")
    if not isinstance(names, RObject) or not isinstance(names.value, list):
        raise RDataError(f"{data_dir}/Rdata.rdx: variables have no names")
    blob = (data_dir / "Rdata.rdb").read_bytes()
    out: dict[str, object] = {}
    for name, where in zip(names.value, variables.value, strict=True):
        offset, length = (int(x) for x in where.value)  # type: ignore[union-attr]
        chunk = blob[offset : offset + length]
        out[str(name)] = unserialize(zlib.decompress(chunk[4:]))
    return out
