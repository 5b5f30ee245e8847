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
