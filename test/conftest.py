"""Shared fixtures: paths to the golden data under test/data/golden and tiny golden models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from vpr_ros.models import VPRModel, load_model

GOLDEN_DIR = Path(__file__).parent / "data" / "golden"
SALAD_GOLDEN_DIR = GOLDEN_DIR / "salad"
A2GC_GOLDEN_DIR = GOLDEN_DIR / "a2gc"


def _read_json(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return json.load(f)


@pytest.fixture(scope="session")
def salad_golden_dir() -> Path:
    """Directory with the tiny SALAD golden files and the SALAD manifests."""
    return SALAD_GOLDEN_DIR


@pytest.fixture(scope="session")
def a2gc_golden_dir() -> Path:
    """Directory with the tiny A²GC golden files and the A²GC manifest."""
    return A2GC_GOLDEN_DIR


@pytest.fixture(scope="session")
def tiny_salad_path() -> Path:
    """Flat state-dict file of the tiny golden SALAD model (released key layout)."""
    return SALAD_GOLDEN_DIR / "tiny_salad_state_dict.pt"


@pytest.fixture(scope="session")
def tiny_salad_config() -> dict[str, Any]:
    """The reference ``config.json`` of the tiny SALAD golden model."""
    return _read_json(SALAD_GOLDEN_DIR / "config.json")


@pytest.fixture(scope="session")
def tiny_a2gc_path() -> Path:
    """Flat state-dict file of the tiny golden A²GC model."""
    return A2GC_GOLDEN_DIR / "state_dict.pt"


@pytest.fixture(scope="session")
def tiny_a2gc_config() -> dict[str, Any]:
    """The reference ``config.json`` of the tiny A²GC golden model."""
    return _read_json(A2GC_GOLDEN_DIR / "config.json")


@pytest.fixture
def tiny_salad_state_dict(tiny_salad_path: Path) -> dict[str, torch.Tensor]:
    """A fresh copy of the tiny SALAD state dict (tests may modify it)."""
    return torch.load(tiny_salad_path, weights_only=True)


@pytest.fixture
def tiny_salad_model(tiny_salad_path: Path, tiny_salad_config: dict[str, Any]) -> VPRModel:
    """Tiny golden SALAD model, loaded fresh per test (tests may modify it)."""
    return load_model(tiny_salad_path, config=tiny_salad_config)


@pytest.fixture
def tiny_a2gc_model(tiny_a2gc_path: Path, tiny_a2gc_config: dict[str, Any]) -> VPRModel:
    """Tiny golden A²GC model, loaded fresh per test (tests may modify it)."""
    return load_model(tiny_a2gc_path, config=tiny_a2gc_config)
