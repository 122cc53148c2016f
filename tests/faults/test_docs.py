"""docs/faults.md: a section for every fault issue 7 lists, each naming a test that exists.

A reader follows a section's test to see the outcome checked, and its links to
the pages that say more: both must lead somewhere.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ROOT / "docs" / "faults.md"

#: The faults of issue 7 ("Proof" -> "Faults", and the HA failover), as section titles.
SECTIONS = [
    "The auth service restarts during live shells",
    "A node is killed mid-session",
    "The recording disk fails",
    "The SQLite file is locked by another process",
    "The proxy-to-node link freezes",
    "SIGTERM on the proxy",
    "High availability: an auth service or an etcd member dies",
]


def _slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_fault_has_a_section_naming_an_existing_test() -> None:
    sections = _sections(FAULTS.read_text())
    assert list(sections) == SECTIONS
    for title, body in sections.items():
        named = re.findall(r"\*Test: `([^`]+\.py)`", body.replace("\n", " "))
        assert named, f"section {title!r} names no test"
        for path in named:
            assert (ROOT / path).is_file(), f"{title!r}: {path} does not exist"


def test_links_lead_to_pages_and_headings_that_exist() -> None:
    text = FAULTS.read_text().replace("\n", " ")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        page, _, anchor = link.partition("#")
        target = FAULTS if not page else FAULTS.parent / page
        assert target.is_file(), link
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), flags=re.MULTILINE)
            assert anchor in {_slug(h) for h in headings}, link


def test_architecture_links_here() -> None:
    assert "](faults.md)" in (ROOT / "docs" / "architecture.md").read_text()
