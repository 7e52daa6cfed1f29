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


@pytest.mark.parametrize("guide", GUIDES, ids=lambda path: path.name)
def test_relative_links_resolve(guide: Path) -> None:
    text = guide.read_text(encoding="utf-8")

    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)

    assert targets
    for target in targets:
        assert (ROOT / "docs" / target).resolve().exists(), f"{guide.name}: broken link {target}"


def test_the_vps_guide_creates_every_secret_file_compose_mounts() -> None:
    guide = (ROOT / "docs" / "deploy-vps.md").read_text(encoding="utf-8")

    for compose in (load_compose(COMPOSE), load_compose(COMPOSE_MAINNET)):
        for name, secret in compose["secrets"].items():
            assert f"> {secret['file'].removeprefix('./')}" in guide, f"{name} is never written"
