"""The committed model folders under models/text and models/image."""

from __future__ import annotations

from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[2] / "models"
TEXT_DIRS = sorted(p for p in (MODELS / "text").glob("*") if (p / "manifest.json").is_file())
IMAGE_DIRS = sorted(p for p in (MODELS / "image").glob("*") if (p / "manifest.json").is_file())
ALL_DIRS = TEXT_DIRS + IMAGE_DIRS


@pytest.fixture(params=TEXT_DIRS, ids=[p.name for p in TEXT_DIRS])
def text_dir(request: pytest.FixtureRequest) -> Path:
    return Path(request.param)


@pytest.fixture(params=IMAGE_DIRS, ids=[p.name for p in IMAGE_DIRS])
def image_dir(request: pytest.FixtureRequest) -> Path:
    return Path(request.param)
