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


def shared_traces_missing(*paths: object) -> bool:
    """True when a test's shared trace files are absent and the test may be skipped.

    The real traces live in ../shared/traces (never copied into the repository). A user's fresh
    clone has no ../shared, and these tests then skip; CI always has it, so under CI a missing
    file is an error instead of a silent skip.
    """
    import os  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    missing = [str(p) for p in paths if not Path(str(p)).exists()]
    if missing and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must have the shared traces: missing {', '.join(missing)}")
    return bool(missing)
