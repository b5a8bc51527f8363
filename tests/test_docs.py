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
