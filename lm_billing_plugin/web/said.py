"""A lower layer's refusal (an exception's English message) said on a page.

The services raise their English sentences (the CLI and the JSON API show them as they are);
a view that puts one in a flash or next to a field hands it to :func:`lm_billing_plugin.i18n.say`
through these helpers, so a German page shows it in German and an English page byte for byte
as before."""

from __future__ import annotations

from ..i18n import say


def said(exc: BaseException | str) -> str:
    """The exception's message in the viewer's language (English: ``str(exc)`` unchanged)."""
    return say(str(exc))


def said_sentence(exc: BaseException | str) -> str:
    """The message as a sentence of its own: the English pages have always shown
    ``str(exc).capitalize()`` plus a full stop, so English keeps exactly that; a translation
    only gets its first letter raised (``capitalize`` would lower German nouns)."""
    text = str(exc)
    shown = say(text)
    if shown == text:
        return f"{text.capitalize()}."
    shown = shown[:1].upper() + shown[1:]
    return shown if shown.endswith((".", "?", "!")) else f"{shown}."
