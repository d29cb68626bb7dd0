"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """A test that configures logging (e.g. through cli.main) must not leak it into the next."""
    yield
    structlog.reset_defaults()
