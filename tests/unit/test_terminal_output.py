"""Server text reaches a terminal as text: no escape sequences, C0 / C1 controls or bidi
overrides, and Rich markup inside table cells is shown rather than rendered."""

from __future__ import annotations

import io

import pytest

from gureum.cli.output import SafeConsole, clean, kv_table, table

CASES = {
    "colour": ("red \x1b[31mRED\x1b[0m", "red RED"),
    "clear-screen": ("a\x1b[2J\x1b[Hb", "ab"),
    "title": ("t \x1b]0;pwned\x07x", "t x"),
    "hyperlink": ("\x1b]8;;http://evil\x1b\\click\x1b]8;;\x1b\\", "click"),
    "c1-csi": ("a\x9b31mb", "ab"),
    "c1-nel": ("a\x85b", "ab"),
    "bidi": ("invoice\u202etxt.exe \u2066x\u2069", "invoicetxt.exe x"),
    "bell-del-nul": ("a\x07b\x7fc\x00d", "abcd"),
    "carriage-return": ("10%\r20%\r\n", "10%\n20%\n"),
    "kept": ("tab\tnew\nline é 한국", "tab\tnew\nline é 한국"),
    "unterminated-osc": ("x\x1b]0;title", "x"),
}


@pytest.mark.parametrize("text,expected", CASES.values(), ids=CASES.keys())
def test_clean(text: str, expected: str) -> None:
    assert clean(text) == expected


def _render(*renderables: object) -> str:
    out = io.StringIO()
    console = SafeConsole(file=out, force_terminal=True, width=200, color_system="truecolor")
    for r in renderables:
        console.print(r)
    return out.getvalue()


def test_tables_and_prints_carry_no_server_escapes() -> None:
    hostile = "x\x1b]0;pwned\x07\x1b]8;;http://evil\x1b\\y\u202e"
    shown = _render(
        kv_table({"name": hostile}),
        table([{"description": hostile}]),
        f"dataset {hostile}",
    )
    assert "pwned" not in shown and "http://evil" not in shown and "\u202e" not in shown
    assert "\x1b]" not in shown  # Rich's own colours (CSI) remain; no OSC from the server


def test_markup_in_a_cell_is_shown_not_rendered() -> None:
    shown = _render(kv_table({"description": "[link=http://evil]here[/link]"}))
    assert "[link=http://evil]here[/link]" in shown
    assert "\x1b]8;" not in shown  # no hyperlink was made
