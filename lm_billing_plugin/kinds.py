"""The problem kinds validation can find: drift, billing rules and server settings.
Low on purpose: the tables (models) and reconcile both name them, and neither imports the other."""

from __future__ import annotations

from typing import Final

DRIFT_KINDS: Final = (
    "unknown_site", "unknown_list", "missing_site", "missing_list", "changed_list"
)
RULE_KINDS: Final = (
    "unassigned_list",
    "over_max_lists",
    "over_max_members",
    "over_max_members_per_list",
    "over_max_lists_per_site",
    "over_max_sites",
    "inactive_customer_has_lists",
)
SERVER_KINDS: Final = ("logging_off",)
#: A value the server sent that billing's columns cannot hold (too long, a NUL, too big): the
#: object is left out (or the server field stored empty) and reported; only the server fixes it.
DATA_KINDS: Final = ("invalid_field",)
ALL_KINDS: Final = DRIFT_KINDS + RULE_KINDS + SERVER_KINDS + DATA_KINDS
#: Rules about a whole billing group across servers; their problems belong to no server.
GROUP_KINDS: Final = ("over_max_lists", "over_max_members", "over_max_sites",
                      "inactive_customer_has_lists")
