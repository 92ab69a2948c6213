"""Where the tests find the checkout's files, wherever in tests/ they sit."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
