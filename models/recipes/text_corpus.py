"""The text corpus: Jane Austen's six novels, from the Debian package `r-cran-janeaustenr`.

The novels are in the public domain; the package (Julia Silge's `janeaustenr`, MIT)
stores them as R character vectors, one line of the Project Gutenberg text each. We take
the package's files with `apt-get download` + `dpkg-deb -x` (no R installation, no
root) unless it is already installed, read them with `models.recipes.rdata`, and turn
them into paragraphs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from models.recipes.rdata import RObject, read_lazyload_db

log = logging.getLogger(__name__)

DEB_PACKAGE = "r-cran-janeaustenr"
CORPUS_NAME = "Jane Austen's novels (Debian package r-cran-janeaustenr)"
CORPUS_LICENSE = "Public domain text (Project Gutenberg); R package janeaustenr MIT"
BOOKS = (
    "sensesensibility",
    "prideprejudice",
    "mansfieldpark",
    "emma",
    "northangerabbey",
    "persuasion",
)
_DATA_SUBDIR = Path("usr/lib/R/site-library/janeaustenr/data")
_HEADING = re.compile(r"^(CHAPTER|Chapter|VOLUME|Volume|THE END|FINIS|END OF)\b")


class CorpusError(RuntimeError):
    """The corpus package could not be found, fetched or read."""


@dataclass(frozen=True)
class Corpus:
    train: list[str]
    heldout: list[str]

    @property
    def train_chars(self) -> int:
        return sum(len(p) for p in self.train)


def locate_package(cache_dir: Path) -> Path:
    """The package's R data folder: installed system-wide, or fetched into `cache_dir`."""
    installed = Path("/") / _DATA_SUBDIR
    if (installed / "Rdata.rdb").is_file():
        return installed
    unpacked = cache_dir / "deb"
    if (unpacked / _DATA_SUBDIR / "Rdata.rdb").is_file():
        return unpacked / _DATA_SUBDIR
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise CorpusError(f"need apt-get and dpkg-deb to fetch the Debian package {DEB_PACKAGE}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("fetching Debian package %s", DEB_PACKAGE)
    run = _apt_download(cache_dir)
    if run.returncode != 0 and os.geteuid() == 0:
        # A fresh machine often has no package lists yet; as root we can fetch them.
        log.info("apt-get download failed; running apt-get update once and retrying")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        run = _apt_download(cache_dir)
    debs = sorted(cache_dir.glob(f"{DEB_PACKAGE}_*.deb"))
    if not debs:
        raise CorpusError(
            f"apt-get download {DEB_PACKAGE} failed ({run.stderr.strip()[-300:]}); "
            "run 'apt-get update' first"
        )
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(unpacked)], check=True)
    return unpacked / _DATA_SUBDIR


def _apt_download(cache_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["apt-get", "download", DEB_PACKAGE], cwd=cache_dir, capture_output=True, text=True
    )


def paragraphs(lines: list[str]) -> list[str]:
    """Gutenberg lines → paragraphs, from the first chapter on, headings dropped."""
    out: list[str] = []
    current: list[str] = []
    started = False
    for raw in [*lines, ""]:
        line = raw.strip()
        if line:
            current.append(line)
            continue
        if not current:
            continue
        text = " ".join(current).replace("_", "")
        text = re.sub(r"\s+", " ", text).strip()
        current = []
        if _HEADING.match(text):
            started = True
            continue
        letters = [c for c in text if c.isalpha()]
        if not started or not letters or all(c.isupper() for c in letters):
            continue
        out.append(text)
    return out


def load_corpus(cache_dir: Path, heldout_fraction: float = 0.03) -> Corpus:
    """Paragraphs of all six novels; the last `heldout_fraction` of each is held out."""
    data = read_lazyload_db(locate_package(cache_dir))
    train: list[str] = []
    heldout: list[str] = []
    for book in BOOKS:
        obj = data.get(book)
        if not isinstance(obj, RObject) or not isinstance(obj.value, list):
            raise CorpusError(f"{DEB_PACKAGE}: no character vector {book!r}")
        paras = paragraphs([s or "" for s in obj.value])
        cut = len(paras) - max(1, int(len(paras) * heldout_fraction))
        train.extend(paras[:cut])
        heldout.extend(paras[cut:])
    log.info("corpus: %d training paragraphs, %d held out", len(train), len(heldout))
    return Corpus(train=train, heldout=heldout)
