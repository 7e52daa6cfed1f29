"""The deployment guides: linked from the README, their links resolve, and the VPS guide
creates every secret file compose mounts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docker.deploy import COMPOSE, COMPOSE_MAINNET, ROOT, load_compose

GUIDES = [ROOT / "docs" / "deploy-vps.md", ROOT / "docs" / "testnet.md"]


def test_readme_links_each_guide_and_keeps_its_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")

    for guide in GUIDES:
        assert f"](docs/{guide.name})" in readme
    assert "make run " in readme and "make test " in readme


def _anchors(markdown: Path) -> set[str]:
    """The heading anchors GitHub makes of a Markdown file's headings (outside code blocks)."""
    prose = re.sub(r"^```.*?^```", "", markdown.read_text(encoding="utf-8"), flags=re.M | re.S)
    headings = re.findall(r"^#+ (.+)$", prose, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize(
    "page",
    [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
    ids=lambda path: path.name,
)
def test_relative_links_and_their_anchors_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#:]*)(?:#([^)]*))?\)", text)

    if page in GUIDES or page.name == "README.md":
        assert links, f"{page.name}: no relative link found (has the link syntax changed?)"
    for target, anchor in links:
        linked = (page.parent / target).resolve() if target else page
        assert linked.exists(), f"{page.name}: broken link {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{page.name}: no heading for {target}#{anchor}"


def test_the_vps_guide_creates_every_secret_file_compose_mounts() -> None:
    guide = (ROOT / "docs" / "deploy-vps.md").read_text(encoding="utf-8")

    for compose in (load_compose(COMPOSE), load_compose(COMPOSE_MAINNET)):
        for name, secret in compose["secrets"].items():
            assert f"> {secret['file'].removeprefix('./')}" in guide, f"{name} is never written"
