"""Fixtures shared by the alp_curation tests."""

from __future__ import annotations

import pytest

from alp_curation.tagging import Tagger


@pytest.fixture(scope="session")
def tagger() -> Tagger:
    """One en_core_web_sm tagger for the whole run: the first load in a process takes seconds."""
    return Tagger("en_core_web_sm")
