"""Tcl 8.6 list syntax for TclPort: decode what Tcl's list parser accepts, reject what it rejects,
and encode words so that Tcl's ``lindex``/``llength`` read back exactly the same elements.
"""

# Decoding has two backends with identical results: Tcl's own C parser reached through
# _tkinter (BACKEND == "tcl"), and a pure-Python port of TclFindElement/TclCopyAndCollapse
# (BACKEND == "python"), used when _tkinter is missing or LM_BILLING_PURE_CODEC=1 is set;
# decode_list_py always uses the latter.  Both are tested against tclsh 8.6.
#
# Outside the contract: lone UTF-16 surrogates (U+D800..U+DFFF) in words to encode.  They
# have no UTF-8 form, the protocol's text encoding, so no Tcl can be sent one; encode_*
# passes them through unchanged.  (Decoding \uD800 yields one, as Tcl does.)

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping

__all__ = [
    "BACKEND",
    "TclListError",
    "decode_dict",
    "decode_list",
    "decode_list_py",
    "encode_dict",
    "encode_list",
    "encode_request",
    "encode_word",
]

logger = logging.getLogger("lm_billing_plugin.tclport.codec")


class TclListError(ValueError):
    """Text that is not a well-formed Tcl list; the message names the fault and its offset."""


# Tcl's list parser (TclIsSpaceProc) splits on exactly these six characters; U+0085, NBSP
# and other Unicode spaces are ordinary element characters to Tcl.
_WS_CHARS = " \t\n\v\f\r"
_WS_CLASS = r"[ \t\n\v\f\r]"

# ---------------------------------------------------------------------------------------
# Decoding, pure Python
# ---------------------------------------------------------------------------------------

# The common case is recognised by two C-level regex passes: fullmatch proves the whole
# text is made of simple items, findall then cuts it with the same item pattern.  Simple
# items are braced words nested at most _FAST_DEPTH deep (braced words are taken literally,
# so backslashes inside only need to hide the next character from the brace count), and
# quoted or bare words without backslashes (those would need substitution).  The item
# alternatives start with distinct characters and every quantifier is possessive, so both
# passes tokenise identically, in linear time.
_FAST_DEPTH = 8


def _fast_item_pattern() -> str:
    nested = r"\{(?:[^{}\\]++|\\.)*+\}"
    for _ in range(_FAST_DEPTH - 2):
        nested = rf"\{{(?:[^{{}}\\]++|\\.|{nested})*+\}}"
    braced = rf"\{{((?:[^{{}}\\]++|\\.|{nested})*+)\}}"
    return rf'{braced}|"([^"\\]*+)"|([^ \t\n\v\f\r{{"\\][^ \t\n\v\f\r\\]*+)'


_FAST_ITEM = _fast_item_pattern()
# Its first alternative alone: a braced word, for the full parser to try before counting.
_FAST_BRACED = re.compile(_FAST_ITEM.split("|\"", 1)[0], re.S)
_FAST_WHOLE = re.compile(
    rf"{_WS_CLASS}*+(?:(?:{_FAST_ITEM})(?:{_WS_CLASS}++|\Z))*+", re.S
)
_FAST_ITEMS = re.compile(_FAST_ITEM, re.S)

_SKIP_WS = re.compile(rf"{_WS_CLASS}*+")
# A bare word runs to the next list space; a backslash sequence (TclParseBackslash) is
# skipped whole, and backslash-newline swallows the spaces and tabs after it, so
# `a\<LF>   b` is one element.  Possessive quantifiers keep the regexes linear.
_BARE_END = re.compile(r"(?:[^ \t\n\v\f\r\\]++|\\\n[ \t]*+|\\.|\\\Z)*+", re.S)
_QUOTED_END = re.compile(r'(?:[^"\\]++|\\\n[ \t]*+|\\.)*+', re.S)
_BRACE_STOP = re.compile(r"[{}\\]")

# One backslash sequence as TclParseBackslash reads it in Tcl 8.6: \x takes at most 2 hex
# digits, \u at most 4, \U at most 8 (fewer, see _parse_big_u), octal at most 3 and only while
# the value stays below 0o400; any other character stands for itself; a final lone
# backslash is itself.
_BACKSLASH = re.compile(
    r"\\(\n[ \t]*|x[0-9A-Fa-f]{1,2}|u[0-9A-Fa-f]{1,4}|U[0-9A-Fa-f]{1,8}"
    r"|[0-3][0-7]{2}|[0-7]{1,2}|.|)",
    re.S,
)
_SIMPLE_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
}


def _parse_big_u(digits: str) -> str:
    # TclParseHex stops taking digits once the value exceeds 0x10FFF (so the next digit
    # would pass U+10FFFF); Tcl 8.6 built with TCL_UTF_MAX=3 (the default, and 8.6.13
    # as shipped) then turns anything above the BMP into U+FFFD.  Verified with tclsh.
    value = 0
    used = 0
    for ch in digits:
        if value > 0x10FFF:
            break
        value = value * 16 + int(ch, 16)
        used += 1
    return ("\ufffd" if value > 0xFFFF else chr(value)) + digits[used:]


def _substitute(match: re.Match[str]) -> str:
    seq = match.group(1)
    if not seq:
        return "\\"
    first = seq[0]
    if first == "\n":
        return " "
    if first in "01234567":
        return chr(int(seq, 8))
    if len(seq) == 1:
        if first > "\uffff":
            # Tcl 8.6 (16-bit Tcl_UniChar) reads a backslashed non-BMP character as
            # U+FFFD; verified with tclsh 8.6.13.
            return "\ufffd"
        return _SIMPLE_ESCAPES.get(first, first)
    if first == "U":
        return _parse_big_u(seq[1:])
    return chr(int(seq[1:], 16))  # \x or \u


def _collapse(raw: str) -> str:
    """TclCopyAndCollapse: the value of a bare or quoted element's source text."""
    if "\\" not in raw:
        return raw
    value = _BACKSLASH.sub(_substitute, raw)
    if "\\u" in raw or "\\U" in raw:
        # Tcl 8.6 keeps \uD83D\uDE00 as a surrogate pair and writes it out as one UTF-8
        # character (U+1F600); a lone surrogate stays lone.  A UTF-16 round trip pairs
        # exactly the adjacent high+low surrogates, as Tcl's UTF-8 output does.
        value = value.encode("utf-16-le", "surrogatepass").decode(
            "utf-16-le", "surrogatepass"
        )
    return value


def _excerpt(text: str, pos: int) -> str:
    # Tcl quotes up to 20 characters of the junk, stopping at the next space.
    end = pos
    limit = min(len(text), pos + 20)
    while end < limit and text[end] not in _WS_CHARS:
        end += 1
    return text[pos:end]


def _braced_end(text: str, pos: int) -> int:
    """Where the braced word opening at ``pos`` ends (just past its closing brace)."""
    depth = 1
    scan = pos + 1
    while True:
        stop = _BRACE_STOP.search(text, scan)
        if stop is None:
            raise TclListError(f"unmatched open brace in list (brace at offset {pos})")
        scan = stop.start()
        if text[scan] == "\\":
            # Inside braces a backslash only hides the next character from the brace
            # count; longer sequences (\x41, \<LF><spaces>) hold no braces.
            scan += 2
            continue
        depth += 1 if text[scan] == "{" else -1
        scan += 1
        if depth == 0:
            return scan


def _skip_ws(text: str, pos: int) -> int:
    spaces = _SKIP_WS.match(text, pos)
    assert spaces is not None  # `*` always matches
    return spaces.end()


def _decode_full(text: str) -> list[str]:
    """The complete TclFindElement state machine; used when the fast path does not apply."""
    out: list[str] = []
    n = len(text)
    pos = _skip_ws(text, 0)
    while pos < n:
        first = text[pos]
        if first == "{":
            braced = _FAST_BRACED.match(text, pos)
            end = _braced_end(text, pos) if braced is None else braced.end()
            # Braced elements are literal: no backslash substitution at all.
            out.append(text[pos + 1 : end - 1])
            if end < n and text[end] not in _WS_CHARS:
                raise TclListError(
                    f'list element in braces followed by "{_excerpt(text, end)}" '
                    f"instead of space (at offset {end})"
                )
        elif first == '"':
            body = _QUOTED_END.match(text, pos + 1)
            assert body is not None  # `*` always matches
            close = body.end()
            if close >= n or text[close] != '"':  # the end, or a final backslash
                raise TclListError(f"unmatched open quote in list (quote at offset {pos})")
            out.append(_collapse(text[pos + 1 : close]))
            end = close + 1
            if end < n and text[end] not in _WS_CHARS:
                raise TclListError(
                    f'list element in quotes followed by "{_excerpt(text, end)}" '
                    f"instead of space (at offset {end})"
                )
        else:
            body = _BARE_END.match(text, pos)
            assert body is not None
            end = body.end()
            out.append(_collapse(text[pos:end]))
        pos = _skip_ws(text, end)
    return out


def decode_list_py(text: str) -> list[str]:
    """Decode a Tcl list with the pure-Python parser (same results as Tcl 8.6)."""
    if _FAST_WHOLE.fullmatch(text) is not None:
        return [a or b or c for a, b, c in _FAST_ITEMS.findall(text)]
    return _decode_full(text)


# ---------------------------------------------------------------------------------------
# Decoding through Tcl's C parser
# ---------------------------------------------------------------------------------------

_Split = Callable[[str], "tuple[str, ...]"]


def _split_in_python(text: str) -> tuple[str, ...]:
    return tuple(decode_list_py(text))


def _load_tcl() -> tuple[Callable[[], _Split], type[Exception]] | None:
    if os.environ.get("LM_BILLING_PURE_CODEC") == "1":
        return None
    try:
        import _tkinter
    except ImportError:
        return None
    if _tkinter.TCL_VERSION != "8.6":
        # The profile is Tcl 8.6's syntax; Tcl 9 reads some escapes differently (\U, and
        # backslashed characters beyond the BMP), so only an 8.6 library may stand in.
        return None

    def new_splitter() -> _Split:
        # The bare _tkinter app, not tkinter.Tcl(): that one is a Python object with
        # reference cycles, so the garbage collector may free it in another thread, and
        # Tcl aborts the process when an interpreter is deleted outside its own thread.
        # The bare app dies with its thread's locals, in that thread.
        try:
            app = _tkinter.create(None, "lm_billing_codec", "Tcl", False, False, False)
        except _tkinter.TclError:
            # Tcl is there but cannot start (e.g. no init.tcl): stay correct, go slower.
            logger.warning("Tcl would not start; decoding Tcl lists in pure Python")
            return _split_in_python
        split: _Split = app.splitlist
        return split

    return new_splitter, _tkinter.TclError


_tcl = _load_tcl()
BACKEND = "python" if _tcl is None else "tcl"
_TclError: type[Exception] = TclListError if _tcl is None else _tcl[1]


# One regex pass beats two `in` tests on long non-ASCII text; most texts have no
# backslash at all and skip it.
_UNICODE_ESCAPE = re.compile(r"\\[uU]")


class _PerThread(threading.local):
    # A Tcl interpreter belongs to the thread that made it, so each thread makes its own
    # on first use (never at import time) and it goes away with the thread.  `split` is
    # unset until then (AttributeError), which costs nothing on the hot path.
    split: _Split


_per_thread = _PerThread()


def decode_list(text: str) -> list[str]:
    """Decode a Tcl list exactly as Tcl 8.6 does; raise ``TclListError`` if Tcl would."""
    # No local variable here may hold the interpreter or its bound method: a traceback
    # keeps frames alive, the garbage collector could then free the interpreter in
    # another thread, and Tcl aborts the process when that happens.
    if _tcl is None or ("\\" in text and _UNICODE_ESCAPE.search(text) is not None):
        # \u and \U can make lone surrogates, which _tkinter hands back from Tcl's
        # CESU-8 as mojibake; the Python parser gets them right.
        return decode_list_py(text)
    try:
        return list(_per_thread.split(text))
    except AttributeError:  # this thread's first call
        _per_thread.split = _tcl[0]()
        return decode_list(text)
    except (TypeError, ValueError):
        # _tkinter refuses NUL characters (TypeError) and lone surrogates in the input
        # (UnicodeEncodeError); the Python parser takes both.
        return decode_list_py(text)
    except _TclError as exc:  # the list is malformed
        # Re-parse in Python for a message with the offset; it raises the same verdict.
        decode_list_py(text)
        raise TclListError(str(exc)) from None


def decode_dict(text: str) -> dict[str, str]:
    """Decode a Tcl dict (a list of even length); a repeated key keeps its last value."""
    words = decode_list(text)
    if len(words) % 2:
        raise TclListError(f"missing value to go with key (dict of {len(words)} words)")
    return dict(zip(words[::2], words[1::2], strict=True))


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------

# A word goes out bare when it holds none of these and does not start with `#`.  Only the
# spaces, a leading brace or quote and backslashes matter to the list parser; the rest
# ([ ] $ ; and a leading #, which would start a comment) are quoted as Tcl's own `list`
# quotes them, so the result is also a safe Tcl command.  The empty word fails the match.
_BARE_OK = re.compile(r'[^ \t\n\v\f\r{}\[\]$;"\\#][^ \t\n\v\f\r{}\[\]$;"\\]*').fullmatch
_BRACE_RISK = re.compile(r"[{}\\]").search
_BRACE_TOKENS = re.compile(r"\\\n|\\.|\\\Z|[{}]", re.S)
_ESCAPES = str.maketrans(
    {c: "\\" + c for c in ' {}[]$;"\\'}
    | {"\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f", "\r": "\\r"}
)


_INNERMOST_BRACES = re.compile(r"\{[^{}]*\}")


def _braces_ok(word: str) -> bool:
    if "\\" not in word:
        # Without backslashes the braces just have to nest: strip innermost pairs until
        # none is left, in C, rather than counting them one by one in Python.
        stripped, found = _INNERMOST_BRACES.subn("", word)
        while found:
            stripped, found = _INNERMOST_BRACES.subn("", stripped)
        return "{" not in stripped and "}" not in stripped
    # A braced word is taken literally, so braces work unless the brace count breaks
    # (backslash hides the next character from the count, as in TclFindElement), a final
    # backslash would hide the closing brace, or there is a backslash-newline, which Tcl's
    # own `list` refuses to brace because a Tcl script would substitute it.
    depth = 0
    for match in _BRACE_TOKENS.finditer(word):
        piece = match.group()
        if piece == "{":
            depth += 1
        elif piece == "}":
            depth -= 1
            if depth < 0:
                return False
        elif piece in ("\\", "\\\n"):
            return False
    return depth == 0


def _escaped(word: str) -> str:
    # Every special character gets a backslash, so the word is one bare element; a
    # leading `#` is escaped too so a list is never read as a comment in a script.
    out = word.translate(_ESCAPES)
    return "\\" + out if out.startswith("#") else out


def _quoted(word: str) -> str:
    if not word:
        return "{}"
    if _BRACE_RISK(word) is None or _braces_ok(word):
        return "{" + word + "}"
    return _escaped(word)


def _quoted_for_request(word: str) -> str:
    if "\n" in word or "\r" in word:
        # A braced word would carry the raw line end; the escaped form spells it `\n`.
        return _escaped(word)
    return _quoted(word)


# The list comprehensions below test _BARE_OK inline: most words are bare, and a function
# call per word is a third of the cost of encoding a large reply.


def encode_word(word: str) -> str:
    """Quote one element so that Tcl reads it back unchanged."""
    return word if _BARE_OK(word) else _quoted(word)


def encode_list(words: Iterable[str]) -> str:
    """Join words into a Tcl list that ``lindex``/``llength`` read back exactly."""
    bare_ok = _BARE_OK
    return " ".join([w if bare_ok(w) else _quoted(w) for w in words])


def encode_request(words: Iterable[str]) -> str:
    """Like ``encode_list``, but never emits a raw LF or CR: fit for one request line."""
    bare_ok = _BARE_OK
    return " ".join([w if bare_ok(w) else _quoted_for_request(w) for w in words])


def encode_dict(mapping: Mapping[str, str]) -> str:
    """Encode a mapping as a Tcl dict: key value key value ..."""
    bare_ok = _BARE_OK
    return " ".join([s if bare_ok(s) else _quoted(s) for kv in mapping.items() for s in kv])
