"""Paths of the committed SQuAD excerpts (demo/squad/README.md: origin, CC BY-SA 4.0)."""

from __future__ import annotations

from pathlib import Path

SQUAD_FIXTURES = Path(__file__).resolve().parents[2] / "demo" / "squad"  # shipped with the demo
V1 = SQUAD_FIXTURES / "dev-v1.1-excerpt.json"
V2 = SQUAD_FIXTURES / "dev-v2.0-excerpt.json"

