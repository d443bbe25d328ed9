"""Fixtures shared by every test folder (helpers live in ``dsb_testing``)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # makes ``dsb_testing`` importable

from dsb_testing import CONF_DIR, ROOT, TINY, compose, run_python, tiny_config

__all__ = ["CONF_DIR", "ROOT", "TINY", "compose", "run_python", "tiny_config"]


@pytest.fixture
def tfds_dir(tmp_path_factory, monkeypatch):
    """A TFDS data_dir shared by the session (the digits build takes ~1 s)."""
    d = tmp_path_factory.getbasetemp() / "tfds"
    monkeypatch.setenv("TFDS_DATA_DIR", str(d))
    return str(d)
