"""``eval-learn techniques`` (metrics, probes, judges): each component with its description and
every parameter with its type and default, one per line, so nothing is cut at any width."""

from __future__ import annotations

import typing

from rich.text import Text

from .. import registry


def _type_name(cls, key: str, fallback: str) -> str:
    """``'a' | 'b'`` for a Literal (``param_table`` shows only ``Literal``), else ``fallback``."""
    field = cls.Params.model_fields.get(key)
    if field is not None and typing.get_origin(field.annotation) is typing.Literal:
        return " | ".join(repr(v) for v in typing.get_args(field.annotation))
    return fallback


def listing(kind: str) -> Text:
    reg = registry.ALL[kind]
    text = Text()
    text.append(f"{kind}s ({len(list(reg.items()))})\n", style="bold")
    for name, cls in reg.items():
        text.append(f"\n{name}", style="bold cyan")
        text.append(f" — {cls.description}\n" if cls.description else "\n")
        rows = cls.param_table()
        if not rows:
            text.append("    (no parameters)\n")
        for key, ann, default in rows:
            text.append(f"    {key}", style="green")
            text.append(f": {_type_name(cls, key, ann)} = {default}\n")
    return text
