"""Fixtures for the fraud tests: one model per session — the shipped default (verified by its
pinned hash, no training), or with another scikit-learn a small seeded one (~5 s)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fraud.model import ModelStore, shipped_model
from fraud.simulate import SimConfig
from fraud.training import train

# Fraud-rich, so a small period still has enough fraud in its validation slice.
RICH = {"takeovers": 400.0, "mule_rings": 100.0, "structurers": 200.0, "card_tests": 100.0, "dormant_drains": 200.0}
SMALL = {"config": SimConfig(seed=3, customers=200, days=14, **RICH), "max_iter": 80}


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fraud-model")
    shipped = shipped_model()
    if shipped is not None:
        ModelStore(d).save_blob(*shipped)
    else:
        ModelStore(d).save(train(**SMALL))
    return d


@pytest.fixture
def model_dir(small_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy (key, manifest and model), so a test may tamper with it."""
    d = tmp_path / "fraud"
    shutil.copytree(small_model_dir, d)
    return d
