"""The hidden version an edit form carries (engine.versions: a digest of the row's
operator-owned fields as the form was loaded), so a save made after someone else's change is
refused instead of silently overwriting it."""

from __future__ import annotations

from typing import Any

from wtforms import HiddenField

__all__ = ["loaded_version_field", "posted_version"]


def loaded_version_field() -> Any:
    """The form's ``loaded_version`` field (set by the view on GET, posted back on save)."""
    return HiddenField()


def posted_version(form: Any) -> str:
    """The version the posted form was loaded with. A POST without the field is not from
    this plugin's page (every edit page sends it): a stale or foreign client, whose save is
    refused like a stale version ("" never matches a row's digest), never saved unchecked."""
    return str(form.loaded_version.data or "")
