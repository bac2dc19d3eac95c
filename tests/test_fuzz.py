"""Fuzz target for the Tcl decoder (issue 14, item 5): any text — random characters, and
random splices of Tcl's special characters into valid lists — decodes to a list of strings or
raises TclListError, never another exception, with both backends agreeing. The reply reader's
fuzz target is tests/test_conformance.py::test_fuzz_client_reply_parser.

LM_BILLING_FUZZ_EXAMPLES sets the number of examples (default 200 here and 150 for the
reply reader); `make stress` runs both with many more (docs/operations.md)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lm_billing_plugin.tclport.codec import (
    TclListError,
    decode_dict,
    decode_list,
    decode_list_py,
    encode_list,
)

EXAMPLES = int(os.environ.get("LM_BILLING_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SPECIAL = st.sampled_from([*"{}\"\\ \t\n\r\v\f[]$;", "\\u", "\\U", "\\x", "\\0", "\x00"])


@st.composite
def tcl_texts(draw: st.DrawFn) -> str:
    """Mostly near-valid: a valid encoded list with special characters spliced in."""
    if draw(st.booleans()):
        return draw(st.text(max_size=200))
    text = list(encode_list(draw(st.lists(st.text(max_size=20), max_size=8))))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(text)))
        text[at:at] = draw(SPECIAL)
    return "".join(text)


def _outcome(decode: object, text: str) -> tuple[str, object]:
    try:
        value = decode(text)  # type: ignore[operator]
    except TclListError as exc:
        assert str(exc)  # a protocol error says what is wrong
        return "error", None
    return "value", value


@FUZZ
@given(text=tcl_texts())
def test_decoder_gives_a_value_or_a_protocol_error(text: str) -> None:
    kind, value = _outcome(decode_list, text)
    if kind == "value":
        assert isinstance(value, list) and all(isinstance(w, str) for w in value)
    # The pure-Python decoder (used where Tcl is missing) agrees with the Tcl one.
    assert _outcome(decode_list_py, text) == (kind, value)
    dict_kind, mapping = _outcome(decode_dict, text)
    if dict_kind == "value":
        assert isinstance(mapping, dict)
        assert kind == "value"
