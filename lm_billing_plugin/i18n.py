"""The plugin's own translation domain (`lm_billing`, catalogs in translations/) and the
gettext functions every layer above tclport uses to mark user-facing text.

Services mark what they say with ``lazy_gettext`` (or ``gettext`` at the moment they build
it); the words are looked up when the text is shown, in the locale Flask-Babel picks for the
request (the host's selector if it has Flask-Babel, else ``LM_BILLING_DEFAULT_LOCALE``).
Outside an app context every function returns the English text, formatted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from flask import current_app, has_app_context
from flask_babel import Domain, LazyString
from flask_babel import get_locale as host_locale
from flask_babel import get_translations as host_translations
from jinja2 import pass_context
from jinja2.runtime import Context
from markupsafe import Markup

DOMAIN = "lm_billing"
TRANSLATIONS_DIR = Path(__file__).resolve().parent / "translations"

# Our catalog only: the host's catalogs ("messages" or whatever it uses) stay untouched.
domain = Domain(translation_directories=[str(TRANSLATIONS_DIR)], domain=DOMAIN)


def _babel_ready() -> bool:
    # Flask-Babel needs app.extensions["babel"]; init_app makes sure there is one, but a
    # thread or a CLI call outside an app context has none: then the text stays English.
    return has_app_context() and "babel" in current_app.extensions


def _format(text: str, variables: dict[str, Any]) -> str:
    return text % variables if variables else text


def gettext(string: str, **variables: Any) -> str:
    """``string`` in the viewer's language, then ``% variables``."""
    if not _babel_ready():
        return _format(string, variables)
    return str(domain.gettext(string, **variables))


_ = gettext


def ngettext(singular: str, plural: str, num: int, **variables: Any) -> str:
    """The singular or plural form for ``num`` (available as ``%(num)s``), translated."""
    if not _babel_ready():
        variables.setdefault("num", num)
        return _format(singular if num == 1 else plural, variables)
    return str(domain.ngettext(singular, plural, num, **variables))


def lazy_gettext(string: str, **variables: Any) -> LazyString:
    """Like :func:`gettext`, translated each time it is shown (form labels, messages built
    at import time or by services that do not know the viewer)."""
    return LazyString(gettext, string, **variables)


def lazy_ngettext(singular: str, plural: str, num: int, **variables: Any) -> LazyString:
    return LazyString(ngettext, singular, plural, num, **variables)


def N_(string: str) -> str:
    """Marks ``string`` for the catalog and returns it unchanged: for text kept as a plain
    str where it is defined (menu labels a host portal also reads) and translated where
    it is shown, with ``gettext(value)`` in Python or ``{{ gettext(value) }}`` in a page."""
    return string


class Words(Mapping[str, str]):
    """A view's table of words for codes (status, kind, outcome...), translated when read.

    The table is built at import time, before any request knows its locale, so it holds the
    English (marked with :func:`N_` for the catalog) and looks each value up in the catalog
    at the moment a page reads it: ``WORDS[code]`` and ``WORDS.get(code, code)`` give the
    viewer's language, and the English unchanged outside a request. Callers keep reading it
    as the plain ``dict[str, str]`` it was."""

    def __init__(self, words: Mapping[str, str]) -> None:
        self._words = dict(words)

    def __getitem__(self, key: str) -> str:
        return gettext(self._words[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._words)

    def __len__(self) -> int:
        return len(self._words)

    def english(self, key: str, default: str = "") -> str:
        """The source (English) words, for output that must not follow the viewer (logs)."""
        return self._words.get(key, default)


# --- Messages from below the web layer ----------------------------------------------------
# The engine, billing and tclport keep saying (and storing: status_message, skip reasons,
# problem details) their English sentences, so the CLI, the JSON API and the logs stay as
# they were. Each sentence is built from a template marked with M_ (tclport, which may not
# import Flask, marks its own with a local N_); a page hands the English text to
# `say`, which finds the template it was made from, translates the template and fills the
# same values in again (the templates are the catalog's own messages with %(name)s values).
# Text that matches none is shown as stored.

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _pattern(template: str) -> re.Pattern[str]:
    parts = _PLACEHOLDER.split(template)
    regex: list[str] = []
    seen: set[str] = set()
    for index, part in enumerate(parts):
        if index % 2 == 0:
            regex.append(re.escape(part))
        elif part in seen:
            regex.append(f"(?P={part})")
        else:
            seen.add(part)
            regex.append(f"(?P<{part}>.+?)")
    return re.compile("".join(regex), re.DOTALL)


def M_(template: str) -> str:
    """Marks a message template a lower layer fills in (``M_("%(server)s refused") %
    values``) and returns it unchanged: the catalog gets the template, and :func:`say` finds
    it again in the English sentence made from it, where a page shows it."""
    return template


def _literal_length(template: str) -> int:
    return len(_PLACEHOLDER.sub("", template))


def _templates(msgids: frozenset[str]) -> tuple[_Template, ...]:
    # The catalog's parameterised messages, the most fixed words first: "no answer from
    # %(where)s within %(seconds)s; ..." before "no answer from %(where)s; ...".
    # Only sentences: a page's short pattern ("%(start)s to %(end)s") would match any text.
    found = [m for m in msgids if _PLACEHOLDER.search(m) and _literal_length(m) >= 10]
    found.sort(key=_literal_length, reverse=True)
    return tuple(
        (m, _pattern(m), tuple(part for part in _PLACEHOLDER.split(m)[::2] if part))
        for m in found)


# (template, its pattern, its fixed parts: a text lacking one of them cannot match)
_Template = tuple[str, re.Pattern[str], tuple[str, ...]]


def _catalog_templates() -> tuple[_Template, ...]:
    translations = domain.get_translations()
    catalog = getattr(translations, "_catalog", {})
    key = id(catalog)
    cached = _TEMPLATE_CACHE.get(key)
    if cached is None:
        msgids = frozenset(k for k in catalog if isinstance(k, str) and k)
        cached = _TEMPLATE_CACHE[key] = _templates(msgids)
    return cached


_TEMPLATE_CACHE: dict[int, tuple[_Template, ...]] = {}

# Longer texts are shown as stored: the matching is a page-time cost per row, and a stored
# problem detail can carry a hosting server's 60,000-byte name (several lazy groups over such
# a text could backtrack for a long time).
SAY_LIMIT = 2_000


def _say_template(text: str, depth: int = 0) -> str | None:
    if len(text) > SAY_LIMIT:
        return None
    for template, pattern, fixed in _catalog_templates():
        if not all(part in text for part in fixed):
            continue
        found = pattern.fullmatch(text)
        if found is None:
            continue
        # A value can be a sentence of its own (a TclPort error inside a fix message): it
        # is translated too; names and the servers' own words match nothing and stay as sent.
        params = {name: _say_value(value, depth + 1)
                  for name, value in found.groupdict().items()}
        return gettext(template, **params)
    return None


def _say_value(value: str, depth: int) -> str:
    if depth > 3:
        return value
    translated = _say_template(value, depth)
    if translated is not None:
        return translated
    exact = domain.gettext(value)
    return str(exact)


def _in_source_language() -> bool:
    locale = host_locale()
    return locale is None or locale.language == "en"


def say(text: Any) -> str:
    """A message a lower layer returned or stored, in the viewer's language: a lazy string
    translates itself, a sentence made from a known template is translated with its values
    kept, a catalog message is looked up, anything else (the SMTP server's own answer, rows
    stored before) is shown as it is. English stays byte for byte what was stored."""
    if isinstance(text, LazyString):
        return str(text)
    if not text:
        return ""
    message: str = str(text)
    if not _babel_ready() or _in_source_language():
        return message
    translated = _say_template(message)
    return translated if translated is not None else gettext(message)


# --- Templates ------------------------------------------------------------------------------
# {% trans %} compiles to calls of `gettext` / `ngettext` looked up in the render context; the
# blueprint's context processor puts these there, so the plugin's pages use the plugin's
# catalog whatever the host installed in jinja_env.globals. A host layout our pages extend
# gets the same context: what our catalog does not know goes on to the host's catalog.


def _page_gettext(string: str) -> str:
    text = domain.gettext(string) if _babel_ready() else string
    if text == string and _babel_ready():
        text = host_translations().ugettext(string)
    return str(text)


def _page_ngettext(singular: str, plural: str, num: int) -> str:
    if not _babel_ready():
        return singular if num == 1 else plural
    # Formatting happens in the caller (newstyle), so %(num)s must survive here.
    text = domain.get_translations().ungettext(singular, plural, num)
    if text in (singular, plural):
        text = host_translations().ungettext(singular, plural, num)
    return str(text)


@pass_context
def template_gettext(context: Context, string: str, **variables: Any) -> str:
    rv = _page_gettext(string)
    if context.eval_ctx.autoescape:
        # The message is the plugin's own text (template or catalog), never data; the data
        # are the variables, which Markup's % escapes. Jinja's own gettext does the same.
        rv = Markup(rv)  # noqa: S704
    # Always format, as Jinja's own newstyle gettext does: a literal % must be written %%.
    return rv % variables


@pass_context
def template_ngettext(
    context: Context, singular: str, plural: str, num: int, **variables: Any
) -> str:
    variables.setdefault("num", num)
    rv = _page_ngettext(singular, plural, num)
    if context.eval_ctx.autoescape:
        rv = Markup(rv)  # noqa: S704  (our text; the variables are escaped, as above)
    return rv % variables


def template_functions() -> dict[str, Any]:
    """What the blueprint's context processor adds to every page's context."""
    return {"gettext": template_gettext, "ngettext": template_ngettext, "_": template_gettext,
            "lmb_say": say}
