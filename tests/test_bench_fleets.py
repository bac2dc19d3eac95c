"""The fleet benchmark's sizes: a named fleet, or SERVERSxLISTS for a reduced one (a full
large fleet takes too long on a small shared machine); anything else is refused plainly. Its
start-up rows are the median of several runs, and a start-up that fails stops it."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from lm_billing_plugin.models import Base
from lm_billing_plugin.testing import benchmark
from lm_billing_plugin.testing.benchmark import FLEETS, fleet_size


def test_named_and_written_fleets() -> None:
    assert fleet_size("large") == FLEETS["large"] == (200, 2_500)
    assert fleet_size("200x500") == (200, 500)


@pytest.mark.parametrize("bad", ["huge", "200x", "x500", "0x500", "200x0", "2e2x500", ""])
def test_a_wrong_fleet_is_refused_with_the_choices(bad: str) -> None:
    with pytest.raises(SystemExit, match="SERVERSxLISTS"):
        fleet_size(bad)


def test_a_start_up_row_is_the_median_of_its_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'bench.sqlite'}"
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    monkeypatch.setattr(benchmark, "STARTUP_RUNS", 3)
    step = benchmark._startup(url, runner=True)
    assert step["runs"] == 3
    assert step["exit"] == 0
    assert 0 < step["wall_min"] <= step["wall"]
    assert step["heavy_modules"] == []


def test_a_start_up_that_fails_fails_the_benchmark(tmp_path: Path) -> None:
    # No tables: `servers list` cannot read the servers, and the row must not look like a time.
    with pytest.raises(SystemExit, match="servers list"):
        benchmark._startup(f"sqlite:///{tmp_path / 'empty.sqlite'}", runner=True)
