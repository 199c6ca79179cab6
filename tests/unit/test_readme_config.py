"""The README's configuration table is the settings' own description, row for row."""

from __future__ import annotations

from pathlib import Path

from app.config import describe

README = Path(__file__).resolve().parents[2] / "README.md"


def table_rows() -> list[str]:
    return [f"| `{name}` | {default} | {doc} |" for name, default, doc in describe()]


def test_every_setting_is_in_the_readme_table_as_described():
    text = README.read_text(encoding="utf-8")
    start = text.index("| variable | default | meaning |")
    lines = text[start:].split("\n\n", 1)[0].splitlines()[2:]
    expected = table_rows()
    assert lines == expected, "regenerate the README's Configuration table:\n" + "\n".join(expected)
