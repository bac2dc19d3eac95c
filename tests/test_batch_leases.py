"""Each server of a batch is claimed in the database (committed, visible to any other
connection) before its fetch begins, and the claim names the run that fetches it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from test_engine import FAST, add_server, lst, session, sims, small

from lm_billing_plugin.engine import batches as runner
from lm_billing_plugin.models import Server
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import HostSim

__all__ = ["sims"]


@pytest.fixture
def papp(make_app: Callable[..., Flask], db_url: str) -> Iterator[Flask]:
    app = make_app(db_url, LM_BILLING_MAX_PARALLEL=3, **FAST)
    with app.app_context():
        yield app


def test_each_server_is_claimed_in_the_database_while_it_is_fetched(
        papp: Flask, sims: Callable[..., HostSim], monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [add_server(f"S{i}", sims(small(lst("a")), latency=0.3)) for i in range(4)]
    engine = get_state().engine
    holders: list[tuple[Any, ...]] = []
    fetch = runner._BatchWorker.run

    def watching(self: Any, targets: Any) -> Any:
        original = self.fetch

        def fetch_and_look(target: Any, deadline: float) -> Any:
            # Another connection (another process would see the same) while we fetch.
            with engine.connect() as other:
                holders.append(other.execute(
                    sa.select(Server.lease_owner, Server.lease_run_id)
                    .where(Server.id == target.server_id)).one())
            return original(target, deadline)

        self.fetch = fetch_and_look
        return fetch(self, targets)

    monkeypatch.setattr(runner._BatchWorker, "run", watching)
    result = runner.validate_servers(ids, actor="t")
    assert len(holders) == len(ids)
    assert all(owner is not None and run_id is not None for owner, run_id in holders)
    assert {s.run_id for s in result.servers} == {run_id for _o, run_id in holders}
    session().commit()
