"""TclPort: the protocol the billing server speaks to ListManager hosting servers.

Public names of the client, its typed records and errors; the simulator lives in ``.simulator``.
"""

from __future__ import annotations

from .client import COMMANDS, DEFAULT_PASSWORD, DEFAULT_PORT, ClientSettings, TclPortClient
from .codec import TclListError
from .errors import TclPortError
from .records import (
    LOGGING_LABELS,
    LOGGING_LISTS,
    LOGGING_NO,
    ListRecord,
    LoggingState,
    ServerInfo,
    SiteRecord,
    UsageRecord,
)

__all__ = [
    "COMMANDS",
    "DEFAULT_PASSWORD",
    "DEFAULT_PORT",
    "LOGGING_LABELS",
    "LOGGING_LISTS",
    "LOGGING_NO",
    "ClientSettings",
    "ListRecord",
    "LoggingState",
    "ServerInfo",
    "SiteRecord",
    "TclListError",
    "TclPortClient",
    "TclPortError",
    "UsageRecord",
]
