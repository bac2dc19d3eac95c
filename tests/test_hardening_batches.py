"""A batch whose process was killed while claiming servers is closed by the very next batch,
on every database: ending the dead run's expired lease is clean-up, not the batch moving."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask

from lm_billing_plugin.engine import batches
from lm_billing_plugin.models import Batch, Run, Server, utcnow
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import Dataset, HostSim


@pytest.fixture
def dbapp(make_app: Callable[..., Flask], db_url: str) -> Iterator[Flask]:
    app = make_app(db_url, LM_BILLING_LEASE_SECONDS=60.0, LM_BILLING_SERVER_DEADLINE=5.0)
    with app.app_context():
        yield app


def test_a_batch_killed_while_claiming_is_closed_by_the_next_batch(dbapp: Flask) -> None:
    session = get_state().session
    lease = get_state().settings.lease_seconds
    with HostSim(Dataset.generate(sites=1, lists=3)) as sim:
        servers = [Server(name=n, host=sim.host, port=sim.port) for n in ("Alpha", "Beta",
                                                                          "Gamma")]
        session.add_all(servers)
        session.commit()
        ids = [s.id for s in servers]
        dead = batches.create_batch("validate", ids[:2], actor="killed")
        # Its process claimed Alpha (lease, running run) and was killed before Beta.
        past = utcnow() - timedelta(seconds=lease + 30)
        alpha_run = session.scalar(sa.select(Run.id).where(Run.batch_id == dead,
                                                           Run.server_id == ids[0]))
        session.execute(sa.update(Batch).where(Batch.id == dead)
                        .values(status="running", started_at=past))
        session.execute(sa.update(Run).where(Run.batch_id == dead).values(started_at=past))
        session.execute(sa.update(Run).where(Run.id == alpha_run).values(status="running"))
        session.execute(sa.update(Server).where(Server.id == ids[0]).values(
            lease_owner="dead-host:1:abc", lease_expires_at=past + timedelta(seconds=lease),
            lease_run_id=alpha_run))
        session.commit()

        result = batches.validate_servers([ids[2]], actor="next")  # the very next batch
        assert result.servers[0].ok, result.to_json()

    assert session.get(Batch, dead).status == "interrupted"
    runs = dict(session.execute(sa.select(Run.server_id, Run.status)
                                .where(Run.batch_id == dead)).all())
    assert runs == {ids[0]: "interrupted", ids[1]: "interrupted"}
    assert session.get(Server, ids[0]).lease_owner is None
    session.commit()
