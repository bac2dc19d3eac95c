"""Revisions of the plugin's schema, oldest first by down_revision."""
