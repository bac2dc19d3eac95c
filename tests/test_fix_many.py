"""`fix --all` on a big fleet names every open problem: 100,000 ids and more. One IN list that
long exceeds PostgreSQL's 65,535 bind parameters (the 200 x 500 benchmark's fix --all failed
with it), so the look-up goes in chunks; found and missing ids both come back, in order."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from test_engine import add_server, dbapp, lst, session, sims, small

from lm_billing_plugin.engine import batches as runner
from lm_billing_plugin.engine import fixes
from lm_billing_plugin.testing.simulator import HostSim

__all__ = ["dbapp", "sims"]


def test_seventy_thousand_ids_are_looked_up_in_chunks(
        dbapp: Flask, sims: Callable[..., HostSim]) -> None:
    sid = add_server("Lists", sims(small(lst("a"))))
    found = runner.sync_servers([sid], actor="t").servers[0].problems
    (real,) = [p["id"] for p in found]
    wanted = [real, *range(real + 1, real + 70_001)]
    result = fixes.fix_problems(wanted, actor="t")
    assert [i.problem_id for i in result.items] == wanted
    assert result.items[0].outcome == "not_fixable"  # unassigned_list: a billing rule
    assert {i.outcome for i in result.items[1:]} == {"not_found"}
    session().commit()
