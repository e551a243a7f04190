"""docs/configuration.md is generated from the config dataclasses; it must match the code it documents."""
from pathlib import Path

from diffrl.docgen import configuration_markdown


def test_the_configuration_reference_matches_the_code():
    committed = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == configuration_markdown(), "regenerate it: python -m diffrl.docgen > docs/configuration.md"
