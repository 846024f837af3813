"""Fixtures shared by the test suite."""

from collections.abc import Iterator

import pytest
import torch

from windowmetrics import scalars


@pytest.fixture(params=["host", "tensor"])
def representation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with CPU scalars as Python floats (the default) and as 0-dim tensors (as on an accelerator)."""
    monkeypatch.setattr(scalars, "PREFER_HOST", request.param == "host")
    return str(request.param)


@pytest.fixture
def float64_default() -> Iterator[None]:
    """Make float64 torch's default float dtype for one test."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
