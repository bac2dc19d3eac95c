"""The demo's bill run: right after the launch nothing is validated; the first sync of "Demo:
healthy" (the demo-only step) assigns Acme's site, and a bill run of last month (the Run
Billing default) then issues Acme's invoice with last month's usage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from lm_billing_plugin import signals
from lm_billing_plugin.billing.runs import bill_customers, last_month
from lm_billing_plugin.demo import create_app
from lm_billing_plugin.demo.__main__ import DemoServer, register, start_simulators, stop_simulators
from lm_billing_plugin.engine import batches
from lm_billing_plugin.migrate import upgrade
from lm_billing_plugin.models import Assignment, Invoice, InvoiceUsage, Server
from lm_billing_plugin.state import get_state


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[tuple[Flask, list[DemoServer]]]:
    app = create_app({"TESTING": True}, instance_path=str(tmp_path / "instance"))
    upgrade(app)
    sims = start_simulators()
    try:
        register(app, sims)
        yield app, sims
    finally:
        stop_simulators(sims)
        for receiver in list(signals.server_synced.receivers_for(app)):
            signals.server_synced.disconnect(receiver, sender=app)
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


def test_first_sync_assigns_acme_and_last_month_bills(
        launched: tuple[Flask, list[DemoServer]]) -> None:
    app, _sims = launched
    with app.app_context():
        session = get_state().session
        assert session.scalar(sa.select(sa.func.count()).select_from(Server)
                              .where(Server.validated_at.is_not(None))) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(Assignment)) == 0
        healthy = session.scalar(sa.select(Server.id).where(Server.name == "Demo: healthy"))
        assert healthy is not None
        batches.sync_servers([healthy], actor="operator")
        assert session.scalar(sa.select(sa.func.count()).select_from(Assignment)) == 1
        period = last_month()
        result = bill_customers(period.start, period.end, actor="operator")
        [acme] = [o for o in result.outcomes if o.company == "Acme Publishing"]
        assert acme.status == "invoiced", acme.reason
        invoice = session.get(Invoice, acme.invoice_id)
        assert invoice is not None and invoice.total >= 49
        used = session.scalar(sa.select(sa.func.sum(InvoiceUsage.recipients))
                              .where(InvoiceUsage.invoice_id == invoice.id))
        assert used and used > 0
        # A second sync changes nothing: Acme has its assignment already.
        batches.sync_servers([healthy], actor="operator")
        assert session.scalar(sa.select(sa.func.count()).select_from(Assignment)) == 1
