"""Every registered component has a docs page that names each of its parameters."""

from pathlib import Path

import pytest

from evallearn import registry

DOCS = Path(__file__).parent.parent / "docs"
COMPONENTS = [(kind, name) for kind in ("technique", "metric", "judge", "probe")
              for name in registry.ALL[kind].names()]


@pytest.mark.parametrize("kind, name", COMPONENTS)
def test_component_has_a_docs_page_naming_its_parameters(kind, name):
    page = DOCS / f"{kind}s" / f"{name}.md"
    assert page.is_file(), f"missing {page}"
    text = page.read_text()
    for param, _ann, _default in registry.ALL[kind].get(name).param_table():
        assert f"`{param}`" in text, f"{page} does not document parameter '{param}'"


@pytest.mark.parametrize("kind, name", [c for c in COMPONENTS if c[0] in ("technique", "judge", "probe")])
def test_algorithm_page_ends_with_differences_from_the_authors_code(kind, name):
    text = (DOCS / f"{kind}s" / f"{name}.md").read_text()
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections and sections[-1].strip() == "## Differences from the authors' code", name
    table = text[text.rindex("## Differences from the authors' code"):]
    assert "| what | why | effect |" in table.replace("  ", " "), f"{name}: no what | why | effect table"
