"""ListManager Billing: Servers for Flask admin portals.
Add hosting servers, check them, validate, sync and fix them, by hand and on a schedule."""

from __future__ import annotations

from .extension import LMBilling
from .migrate import alembic_include_object, downgrade, upgrade
from .models import Base as BillingBase
from .state import get_state
from .web.access import requires
from .web.portals import add_to_appbuilder, add_to_flask_admin

__all__ = [
    "BillingBase",
    "LMBilling",
    "add_to_appbuilder",
    "add_to_flask_admin",
    "alembic_include_object",
    "downgrade",
    "get_state",
    "requires",
    "upgrade",
]
__version__ = "0.1.0"
