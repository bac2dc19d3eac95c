"""The Tcl list codec against the real thing: every direction is checked with tclsh 8.6, and
both decode backends (Tcl's C parser via tkinter, the pure-Python port) face the same cases.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tclsh_oracle import Tclsh, tclsh_path

from lm_billing_plugin.tclport import codec
from lm_billing_plugin.tclport.codec import (
    TclListError,
    decode_dict,
    decode_list,
    decode_list_py,
    encode_dict,
    encode_list,
    encode_request,
    encode_word,
)

IN_CI = os.environ.get("CI", "").lower() == "true"

Decoder = Callable[[str], list[str]]
DECODERS = [
    pytest.param(decode_list, id=f"decode_list[{codec.BACKEND}]"),
    pytest.param(decode_list_py, id="decode_list_py"),
]

CASES = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# For checks that repeat what a main direction already covers from another angle.
FEWER_CASES = settings(CASES, max_examples=30)


@pytest.fixture(scope="module")
def tclsh() -> Iterator[Tclsh]:
    path = tclsh_path()
    if path is None:
        reason = "tclsh (Tcl 8.6) is not installed: the codec cannot be checked against Tcl"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: this must not be skipped)")
        pytest.skip(reason)
    oracle = Tclsh(path)
    yield oracle
    oracle.close()


def _ours(decode: Decoder, text: str) -> list[str] | None:
    try:
        return decode(text)
    except TclListError:
        return None


# --- generated strings -----------------------------------------------------------------

# Heavy on what Tcl's list syntax cares about, plus pieces that form backslash escapes
# (\x41, \u00e9, \uD83D\uDE00, \U0001F600, octal, backslash-newline) and text beyond ASCII:
# NUL, NEL and NBSP (not list spaces to Tcl), BMP and non-BMP characters.
_SYNTAX = list('{}\\"$[];# \t\n\r\v\f') * 3
_LETTERS = [*"abxuU0178Ffn", "é", "ß", "€", "語", "😀", "𝄞", "\x00", "\x85", "\xa0"]
_FRAGMENTS = [
    "\\x", "\\x4", "\\u", "\\u00e9", "\\uD83D", "\\uDE00", "\\uD800", "\\U", "\\U0001F600",
    "\\U110000", "\\U0000FFFF", "\\0", "\\101", "\\400", "\\777", "\\\n", "\\\n \t",
    "{}", '""', "{a b}", '"a b"', "\\{", "\\}", "\\\\", "\\😀", "\\é",
]
_PIECE = st.sampled_from(_SYNTAX + _LETTERS + _FRAGMENTS)
# Arbitrary text for the decoder: any mix of the above.
_TEXT = st.lists(_PIECE, max_size=24).map("".join)
# Words to encode: the syntax-heavy mix, or any Unicode text.  Lone surrogates (category
# Cs) are left out: they have no UTF-8 form (the protocol's encoding), so no Tcl can be
# sent one.  (The pieces above only spell surrogates as escapes, never hold one.)
_ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_WORD = st.one_of(
    st.lists(st.sampled_from(_SYNTAX + _LETTERS), max_size=12).map("".join),
    _TEXT,
    _ANY_TEXT,
)
# Each example is a batch for one round trip to tclsh: 80 examples of 10-40 cases give
# thousands of cases per test in a few seconds.
_WORD_LISTS = st.lists(st.lists(_WORD, max_size=6), min_size=10, max_size=40)


# --- against tclsh, both directions ------------------------------------------------------


@CASES
@given(batch=_WORD_LISTS)
def test_tcl_reads_our_encoding(tclsh: Tclsh, batch: list[list[str]]) -> None:
    """(a) What we encode, Tcl's llength/lindex read back as exactly the same words."""
    encoded = [encode_list(words) for words in batch]
    assert tclsh.split(encoded) == batch


@FEWER_CASES
@given(batch=_WORD_LISTS)
def test_tcl_reads_our_dict(tclsh: Tclsh, batch: list[list[str]]) -> None:
    mappings = [dict(zip(words, reversed(words), strict=True)) for words in batch]
    for mapping, got in zip(mappings, tclsh.split([encode_dict(m) for m in mappings]),
                            strict=True):
        assert got is not None
        assert got == [s for kv in mapping.items() for s in kv]


@CASES
@given(batch=_WORD_LISTS)
def test_request_lines_have_no_line_ends(tclsh: Tclsh, batch: list[list[str]]) -> None:
    """(d) A request never holds a raw LF or CR, and Tcl still reads the same words."""
    encoded = [encode_request(words) for words in batch]
    for line in encoded:
        assert "\n" not in line
        assert "\r" not in line
    assert tclsh.split(encoded) == batch


@pytest.mark.parametrize("decode", DECODERS)
@CASES
@given(batch=_WORD_LISTS)
def test_we_read_tcls_encoding(tclsh: Tclsh, decode: Decoder, batch: list[list[str]]) -> None:
    """(b) What Tcl's own `list` writes, we decode to the same words."""
    for words, text in zip(batch, tclsh.make_list(batch), strict=True):
        assert decode(text) == words


@pytest.mark.parametrize("decode", DECODERS)
@CASES
@given(texts=st.lists(st.one_of(_TEXT, _TEXT, _ANY_TEXT), min_size=10, max_size=40))
def test_we_accept_what_tcl_accepts(tclsh: Tclsh, decode: Decoder, texts: list[str]) -> None:
    """(c) Any text: we accept it iff Tcl does, and then find the same elements."""
    for text, expected in zip(texts, tclsh.split(texts), strict=True):
        assert _ours(decode, text) == expected, repr(text)


@pytest.mark.parametrize("decode", DECODERS)
@FEWER_CASES
@given(batch=_WORD_LISTS)
def test_our_round_trip(decode: Decoder, batch: list[list[str]]) -> None:
    for words in batch:
        assert decode(encode_list(words)) == words
        assert decode(encode_request(words)) == words


# --- hand-picked cases -------------------------------------------------------------------

ACCEPT = [
    ("", [], "empty"),
    (" \t\n\v\f\r ", [], "only-list-spaces"),
    ("a b  c", ["a", "b", "c"], "bare"),
    ("a\tb\nc\vd\fe\rf", ["a", "b", "c", "d", "e", "f"], "all-six-list-spaces"),
    ("a\x85b a\xa0b", ["a\x85b", "a\xa0b"], "nel-nbsp-are-not-spaces"),
    ("{}", [""], "empty-braces"),
    ('""', [""], "empty-quotes"),
    ("{a b} c", ["a b", "c"], "braced"),
    ("{a {b c} d}", ["a {b c} d"], "nested-braces"),
    ("{a\\}b}", ["a\\}b"], "escaped-brace-in-braces-stays-literal"),
    ("{a\\\nb}", ["a\\\nb"], "backslash-newline-in-braces-literal"),
    ("{\\\\}", ["\\\\"], "double-backslash-in-braces"),
    ("{$x [y] ;}", ["$x [y] ;"], "braces-hide-substitution"),
    ('"a b"', ["a b"], "quoted"),
    ('"a\\"b"', ['a"b'], "escaped-quote-in-quotes"),
    ('"a{b"', ["a{b"], "brace-in-quotes"),
    ('"a\\\n   b"', ["a b"], "backslash-newline-in-quotes"),
    ('a{b a}b a"b', ["a{b", "a}b", 'a"b'], "braces-quotes-inside-bare"),
    ("a\\ b", ["a b"], "escaped-space"),
    ("a\\\n \t b", ["a b"], "backslash-newline-eats-spaces-tabs"),
    ("a\\\n\nb", ["a ", "b"], "backslash-newline-not-eating-newline"),
    ("\\x41\\x4g", ["A\x04g"], "hex"),
    ("\\xFFF", ["\xffF"], "hex-max-two-digits"),
    ("\\x \\u \\U", ["x", "u", "U"], "escape-letters-without-digits"),
    ("\\u00e9\\u20AC", ["é€"], "unicode-escapes"),
    ("\\uD83D\\uDE00", ["😀"], "surrogate-pair-escapes-join"),
    ("\\uDE00\\uD83D", ["\ude00\ud83d"], "reversed-surrogates-stay-lone"),
    ("\\uD800", ["\ud800"], "lone-surrogate-escape"),
    ("\\U0001F600", ["\ufffd"], "non-bmp-U-escape-is-replacement-in-tcl-8.6"),
    ("\\U110000", ["\ufffd0"], "U-stops-before-exceeding-10FFFF"),
    ("\\U0000FFFF \\U000000411", ["\uffff", "A1"], "U-max-eight-digits"),
    ("\\101 \\400 \\777 \\8 \\0", ["A", " 0", "?7", "8", "\x00"], "octal"),
    ("\\a\\b\\f\\n\\r\\t\\v", ["\a\b\f\n\r\t\v"], "control-escapes"),
    ("\\q\\é\\\x00", ["qé\x00"], "other-escapes-are-literal"),
    ("\\😀x {\\😀}", ["\ufffdx", "\\😀"], "backslashed-non-bmp-is-replacement-in-tcl-8.6"),
    ("a\\", ["a\\"], "trailing-backslash"),
    ("\\", ["\\"], "lone-backslash"),
    ("\\{a \\\"b", ["{a", '"b'], "escaped-leading-brace-and-quote"),
    ("#a ;b", ["#a", ";b"], "hash-and-semicolon-bare"),
    ("😀 é 𝄞", ["😀", "é", "𝄞"], "non-ascii"),
    ("a\x00b {\x00} \"\x00\"", ["a\x00b", "\x00", "\x00"], "nul"),
    ("{a}\t{b}\n", ["a", "b"], "braced-with-other-spaces"),
    ("{" * 12 + "}" * 12 + " x", ["{" * 11 + "}" * 11, "x"], "nesting-beyond-fast-path"),
]

REJECT = [
    ("{", "unmatched open brace", "open-brace"),
    ("{a} {b", "unmatched open brace", "second-open-brace"),
    ("{{}", "unmatched open brace", "nested-open-brace"),
    ("{\\}", "unmatched open brace", "backslash-hides-closing-brace"),
    ("{a\\", "unmatched open brace", "trailing-backslash-in-braces"),
    ('"a', "unmatched open quote", "open-quote"),
    ('"a\\"', "unmatched open quote", "backslash-hides-closing-quote"),
    ("{a}b", 'braces followed by "b"', "junk-after-brace"),
    ("{a}{b}", 'braces followed by "{b}"', "brace-after-brace"),
    ('{a}"', 'braces followed by """', "quote-after-brace"),
    ("{a}\x85", "braces followed by", "nel-is-not-a-space"),
    ('"a"b', 'quotes followed by "b"', "junk-after-quote"),
    ("{" * 12 + "}" * 11, "unmatched open brace", "deep-open-brace"),
    ("{" * 12 + "}" * 12 + "x", 'braces followed by "x"', "junk-after-deep-braces"),
    ('x "a"{b} y', 'quotes followed by "{b}"', "junk-after-quote-later"),
]


@pytest.mark.parametrize("decode", DECODERS)
@pytest.mark.parametrize(("text", "expected"), [pytest.param(t, e, id=i) for t, e, i in ACCEPT])
def test_accept(decode: Decoder, text: str, expected: list[str]) -> None:
    assert decode(text) == expected


@pytest.mark.parametrize("decode", DECODERS)
@pytest.mark.parametrize(("text", "message"), [pytest.param(t, m, id=i) for t, m, i in REJECT])
def test_reject(decode: Decoder, text: str, message: str) -> None:
    with pytest.raises(TclListError, match="offset") as caught:
        decode(text)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)




ENCODE = [
    ("", "{}", "empty"),
    ("abc", "abc", "plain"),
    ("é😀", "é😀", "non-ascii-bare"),
    ("a b", "{a b}", "space"),
    ("#a", "{#a}", "leading-hash"),
    ("a#", "a#", "inner-hash"),
    ("{", "\\{", "lone-open-brace"),
    ("}a{", "\\}a\\{", "unbalanced-braces"),
    ("a\\", "a\\\\", "trailing-backslash"),
    ("a\\\nb", "a\\\\\\nb", "backslash-newline"),
    ("$x[y];", "{$x[y];}", "substitution-characters"),
    ('"', '{"}', "quote"),
    ("a {b {c}} d", "{a {b {c}} d}", "nested-braces"),
    ("}{", "\\}\\{", "braces-in-wrong-order"),
    ("{a} b}", "\\{a\\}\\ b\\}", "one-brace-too-many"),
    ("{a\\}", "\\{a\\\\\\}", "backslash-hides-closing-brace"),
    ("{a\\\\}", "{{a\\\\}}", "escaped-backslash-before-brace"),
]


@pytest.mark.parametrize(("word", "encoded"), [pytest.param(w, e, id=i) for w, e, i in ENCODE])
def test_encode_word(word: str, encoded: str) -> None:
    assert encode_word(word) == encoded


def test_hand_picked_cases_match_tclsh(tclsh: Tclsh) -> None:
    """The tables above are what Tcl 8.6 itself says, not our guesses."""
    texts = [t for t, _, _ in ACCEPT] + [t for t, _, _ in REJECT] + [e for _, e, _ in ENCODE]
    expected = (
        [e for _, e, _ in ACCEPT] + [None] * len(REJECT) + [[w] for w, _, _ in ENCODE]
    )
    assert tclsh.split(texts) == expected


@pytest.mark.parametrize("decode", DECODERS)
def test_decode_takes_lone_surrogates_in_input(decode: Decoder) -> None:
    # Not UTF-8, so no server sends them, but a caller's str may hold them: no crash.
    assert decode("\ud800 {a \udfff}") == ["\ud800", "a \udfff"]


def test_encode_request_escapes_line_ends() -> None:
    assert encode_request(["set", "a\nb", "c\rd", "x y"]) == "set a\\nb c\\rd {x y}"


def test_encode_accepts_any_iterable() -> None:
    assert encode_list(w for w in ["a", "b c"]) == "a {b c}"
    assert encode_request(iter(["a"])) == "a"
    assert encode_list([]) == ""


# --- dicts -------------------------------------------------------------------------------


def test_decode_dict() -> None:
    assert decode_dict("total 2 items {{a b} {c d}}") == {"total": "2", "items": "{a b} {c d}"}
    assert decode_dict("") == {}


def test_decode_dict_last_duplicate_wins() -> None:
    # As Tcl's dict: [dict get {k 1 j 2 k 3} k] is 3, and the keys keep first-seen order.
    decoded = decode_dict("k 1 j 2 k 3")
    assert decoded == {"k": "3", "j": "2"}
    assert list(decoded) == ["k", "j"]


@pytest.mark.parametrize("text", ["a", "a b c", "{a b} c {d"])
def test_decode_dict_rejects(text: str) -> None:
    with pytest.raises(TclListError):
        decode_dict(text)


def test_encode_dict_round_trip() -> None:
    mapping = {"name": "a {b", "site": "", "descr": "x\ny", "#": "$"}
    assert decode_dict(encode_dict(mapping)) == mapping


# --- backends ----------------------------------------------------------------------------


def test_backend_is_tcl_when_tkinter_is_there() -> None:
    try:
        import tkinter  # noqa: F401
    except ImportError:
        pytest.skip("no tkinter: only the pure-Python backend exists here")
    if os.environ.get("LM_BILLING_PURE_CODEC") == "1":
        pytest.skip("LM_BILLING_PURE_CODEC=1 is set for this run")
    assert codec.BACKEND == "tcl"


@pytest.mark.parametrize(
    ("setup", "env"),
    [
        pytest.param("", {"LM_BILLING_PURE_CODEC": "1"}, id="env-var"),
        # A Python built without tkinter: importing _tkinter fails.
        pytest.param("import sys; sys.modules['_tkinter'] = None;", {}, id="no-tkinter"),
    ],
)
def test_pure_python_backend(setup: str, env: dict[str, str]) -> None:
    code = (
        f"{setup}from lm_billing_plugin.tclport import codec;"
        "print(codec.BACKEND, codec.decode_list('a {b c}'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split(" ", 1) == ["python", "['a', 'b c']\n"]


_THREADS_SCRIPT = """
import gc, sys, threading
from concurrent.futures import ThreadPoolExecutor
from lm_billing_plugin.tclport.codec import TclListError, decode_list, decode_list_py, encode_list

texts = [encode_list([f"w{i}", f"x {i}", "{", "\\u00e9", "\\x00", ""]) for i in range(100)]
expected = [decode_list_py(t) for t in texts]
barrier = threading.Barrier(8)

def work(n):
    barrier.wait(timeout=10)
    for _ in range(5):
        assert [decode_list(t) for t in texts] == expected
    try:
        decode_list("{a}b")
    except TclListError as exc:
        assert "offset 3" in str(exc), exc
    else:
        raise AssertionError("accepted {a}b")
    return n

def fail():
    decode_list("{a}{b}")

kept = []
for round in range(3):
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(work, i) for i in range(8)]
        assert sorted(f.result(timeout=30) for f in futures) == list(range(8))
        # An error raised in a worker, kept (with its traceback) beyond the worker's life.
        kept.append(pool.submit(fail).exception(timeout=30))
# Short-lived plain threads, as a threaded WSGI server makes one per request.
for _ in range(50):
    t = threading.Thread(target=lambda: decode_list("a {b c}"))
    t.start()
    t.join(timeout=10)
assert all(isinstance(e, TclListError) for e in kept), kept
del kept
gc.collect()
print("ok", flush=True)
"""


def test_decode_from_many_threads() -> None:
    """Threads each get their own Tcl interpreter: none hangs, all agree, errors map, and
    nothing aborts when threads end and the garbage collector runs (checked in a child
    process, since Tcl would abort the whole process)."""
    out = subprocess.run(
        [sys.executable, "-c", _THREADS_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (out.returncode, out.stdout) == (0, "ok\n"), out.stderr[-2000:]


def test_large_reply_same_on_both_backends() -> None:
    items = [
        encode_dict({"name": f"list {i} {{", "site": "s", "descr": "d\\x", "members": str(i)})
        for i in range(3000)
    ]
    reply = encode_dict({"total": "3000", "items": encode_list(items)})
    for decode in (decode_list, decode_list_py):
        outer = decode_dict(reply) if decode is decode_list else dict(
            zip(*[iter(decode_list_py(reply))] * 2, strict=True)
        )
        decoded = [decode(item) for item in decode(outer["items"])]
        assert decoded[7] == ["name", "list 7 {", "site", "s", "descr", "d\\x", "members", "7"]
        assert len(decoded) == 3000
