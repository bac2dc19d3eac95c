"""The hidden version an edit form carries (engine.versions: a digest of the row's
operator-owned fields as the form was loaded), so a save made after someone else's change is
refused instead of silently overwriting it."""

from __future__ import annotations

from typing import Any

from flask import request
from wtforms import HiddenField

__all__ = ["loaded_version_field", "posted_version"]


def loaded_version_field() -> Any:
    """The form's ``loaded_version`` field (set by the view on GET, posted back on save)."""
    return HiddenField()


def posted_version(form: Any) -> str | None:
    """The version the posted form was loaded with; None when the POST has no such field (a
    script's form made before the field existed: saved unchecked, as it always was — every
    page's form sends it)."""
    if "loaded_version" not in request.form:
        return None
    return str(form.loaded_version.data or "")
