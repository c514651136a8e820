"""The suite's shared pytest fixtures (and nothing else).

Helpers, references and constants live in ``tests/helpers/`` and are imported
from there by name (``from tests.helpers.fixtures import fixture_path``); no
test imports this file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.fixtures import (
    DCN_FIXTURES,
    DCN_MODELS,
    OFFICIAL_CHECKPOINTS,
    fixture_path,
    load_fixture,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def official_outputs():
    """``official_outputs.npz``: the authors' model run on a 512x512 photo."""
    return load_fixture("official_outputs.npz")


@pytest.fixture(scope="session")
def official_assignments():
    """``official_assignments.npz``: official per-anchor assignments, 640x800 canvas."""
    return load_fixture("official_assignments.npz")


@pytest.fixture(scope="session")
def official_checkpoint() -> Path:
    """The official weights, zip format (``OFFICIAL_CHECKPOINTS["zip"]``)."""
    return fixture_path(OFFICIAL_CHECKPOINTS["zip"])


@pytest.fixture(scope="session")
def official_legacy_checkpoint() -> Path:
    """The same weights in torch's legacy stream format."""
    return fixture_path(OFFICIAL_CHECKPOINTS["legacy"])


@pytest.fixture(scope="session")
def official_dcn_outputs() -> dict:
    """``official_atss_dcn/<model>_outputs.npz`` for each of ``DCN_MODELS``: the
    authors' DCNv2 models run on a 320x400 crop, with their recorded DCN layers."""
    return {m: load_fixture(f"{m}_outputs.npz", DCN_FIXTURES) for m in DCN_MODELS}
