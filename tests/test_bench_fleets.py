"""The fleet benchmark's sizes: a named fleet, or SERVERSxLISTS for a reduced one (a full
large fleet takes too long on a small shared machine); anything else is refused plainly."""

from __future__ import annotations

import pytest

from lm_billing_plugin.testing.benchmark import FLEETS, fleet_size


def test_named_and_written_fleets() -> None:
    assert fleet_size("large") == FLEETS["large"] == (200, 2_500)
    assert fleet_size("200x500") == (200, 500)


@pytest.mark.parametrize("bad", ["huge", "200x", "x500", "0x500", "200x0", "2e2x500", ""])
def test_a_wrong_fleet_is_refused_with_the_choices(bad: str) -> None:
    with pytest.raises(SystemExit, match="SERVERSxLISTS"):
        fleet_size(bad)
