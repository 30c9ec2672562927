"""The README's generated sections stay true: the config reference is the model's own output."""

from __future__ import annotations

from pathlib import Path

from hostproxy.config.reference import render

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_reference(text: str) -> str:
    start = text.index("<!-- config-reference -->\n") + len("<!-- config-reference -->\n")
    return text[start : text.index("<!-- /config-reference -->")]


def test_config_reference_in_readme_is_generated_from_the_model() -> None:
    expected = "\n".join("#" + line if line.startswith("#") else line for line in render().splitlines())
    assert readme_reference(README.read_text()).strip() == expected.strip(), (
        "README's config reference is out of date: regenerate it from `python -m hostproxy.config.reference` "
        "(headings one level deeper) between the config-reference markers"
    )


def test_readme_shows_the_two_setup_commands_first() -> None:
    text = README.read_text()
    setup = text.index("## Set up")
    assert text.index("make run", setup) < text.index("make test", setup) < text.index("## How a request")
