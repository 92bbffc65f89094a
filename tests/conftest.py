"""Shared fixtures: small SynthPedes worlds generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from data.synthpedes import WorldConfig, generate

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SMALL = WorldConfig(seed=7, train_ids=12, val_ids=4, test_ids=10)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """A tiny rendered SynthPedes world (26 identities)."""
    out = tmp_path_factory.mktemp("world") / "synthpedes"
    generate(out, SMALL, workers=1, progress=False)
    return out
