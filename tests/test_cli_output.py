"""The CLI's escaping of terminal-steering characters takes a regex fast path (speed, issue
15: a validate prints a thousand problem lines); it must escape exactly what the
per-character rule escapes, for every code point, with and without kept characters."""

from __future__ import annotations

import pytest

from lm_billing_plugin.cli import output


@pytest.mark.parametrize("keep", ["", "\n\t"])
def test_the_fast_check_agrees_with_the_character_rule_on_every_code_point(keep: str) -> None:
    search = output._unsafe_search(keep)
    disagree = [hex(cp) for cp in range(0x110000)
                if (search(chr(cp)) is not None) != output._unsafe(chr(cp), keep)]
    assert disagree == []


def test_escaped_and_kept_characters_in_one_line() -> None:
    assert output._printable("a\x1b]52;c\x07b\u202e\n", keep="\n") == "a\\x1b]52;c\\x07b\\u202e\n"
    assert output._printable("tab\there") == "tab\\there"
    assert output._printable("plain café 東京") == "plain café 東京"


def test_table_width_counts_wide_characters_twice_and_ascii_once() -> None:
    text = output.table(["A", "B"], [["東京", "x"], ["ab", "y"]])
    lines = text.splitlines()
    assert lines[2] == "東京  x"
    assert lines[3] == "ab    y"
