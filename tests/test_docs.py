"""The repository explains itself with its own files (issue 11, point 8): every link in
README.md and docs/ resolves inside the repository, and every repository path they name
in backquotes exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")
TOP = ("relay/", "tests/", "docs/", "config/", "systemd/", "policies/", "bench/", "certs/")
_TOPS = "|".join(map(re.escape, TOP))
PATH = re.compile(rf"`((?:{_TOPS})[A-Za-z0-9_./-]+)`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_stay_in_the_repository(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://", "#")):
            continue
        resolved = (doc.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(REPO), f"{doc.name}: {target} leaves the repository"
        assert resolved.exists(), f"{doc.name}: {target} does not exist"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_named_paths_exist(doc: Path) -> None:
    missing = [p for p in PATH.findall(doc.read_text()) if not (REPO / p.rstrip(".")).exists()]
    assert missing == [], f"{doc.name} names paths that do not exist: {missing}"
