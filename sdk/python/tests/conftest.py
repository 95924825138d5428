"""Fixtures: one real `drover serve` for the session, and a fresh enrolled
`drover-agent run` for each test (examples/edge-inference/stack.py starts them).

Binaries: $DROVER_BIN and $DROVER_AGENT_BIN, else the workspace's target/debug;
$DROVER_STACK_DATABASE_URL picks the server's database (default: SQLite in a
temporary directory). `cargo test --workspace` runs these through
tests/e2e/python_sdk.rs, which builds the binaries and sets the variables.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "sdk" / "python" / "src"))
sys.path.insert(0, str(REPO / "examples" / "edge-inference"))

import stack  # noqa: E402

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.Server]:
    s = stack.Server(tmp_path_factory.mktemp("drover"),
                     database_url=os.environ.get("DROVER_STACK_DATABASE_URL") or None)
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture
def agent(server: stack.Server, tmp_path: Path) -> Iterator[stack.Agent]:
    """A running agent with a `files` installer for models into tmp_path/models."""
    a = stack.Agent(tmp_path, server,
                    extra_toml=stack.files_installer("model", tmp_path / "models"))
    a.models = tmp_path / "models"  # type: ignore[attr-defined]
    a.enroll().start()
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def unique() -> str:
    """A name no other test of this session uses."""
    return f"t{next(_numbers)}"
