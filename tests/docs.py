"""The documentation's text, as tests read it: the README and every page of ``docs/``, each
written once (the site includes README parts by reference, never a copy)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
DOCS = "\n".join(path.read_text() for path in DOC_FILES)


def page(name: str) -> str:
    """One page of ``docs/`` (``"deployment.md"``)."""
    return (ROOT / "docs" / name).read_text()
