import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon18"


@pytest.fixture
def amazon18() -> Path:
    """The Industrial benchmark data beside the checkout; tests that need it skip when it is absent."""
    if not (SHARED_DATA / "index" / "Industrial_and_Scientific.item.json").exists():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (see DESIGN.md, 'Benchmark data')")
    return SHARED_DATA


@pytest.fixture
def fake():
    """Start fake OpenAI-compatible servers on loopback port 0 (tests/fake_openai.py); every one is stopped after the
    test, and each stops itself after 30 s whatever happens."""
    from fake_openai import FakeOpenAI

    servers = []

    def start(script=None, **kw) -> FakeOpenAI:
        servers.append(FakeOpenAI(script, max_lifetime=30, **kw).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
