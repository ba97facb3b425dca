"""The docs a person reads: every setting documented, every link resolving, a README that fits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config import Settings

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
README_MAX_BYTES = 15 * 1024


def anchors_of(page: Path) -> set[str]:
    """Return the anchors GitHub makes of a page's headings."""
    headings = re.findall(r"(?m)^#+ (.+)$", page.read_text())
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_setting_is_in_the_configuration_reference() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    missing = [
        field.alias or name
        for name, field in Settings.model_fields.items()
        if f"| `{field.alias or name.upper()}` |" not in reference
    ]
    assert missing == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        missing_anchor = anchor and dest.suffix == ".md" and anchor not in anchors_of(dest)
        if not dest.exists() or missing_anchor:
            broken.append(target)
    assert broken == []


def test_the_readme_fits_a_screen_or_two_and_links_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= README_MAX_BYTES
    assert "make run" in readme and "make test" in readme
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, f"the README does not link {page.name}"
