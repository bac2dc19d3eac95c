"""Scheduled background validation (APScheduler ticker + database claim)."""

from __future__ import annotations

from flask import Flask


def install_autostart(app: Flask) -> None:
    """Arrange for the scheduler to start lazily in a serving process (never here)."""
