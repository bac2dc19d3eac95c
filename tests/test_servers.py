"""The server registry service: field rules, the host-change password rule, delete keeping
history, audit without passwords; the database parts on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from lm_billing_plugin.engine import servers as registry
from lm_billing_plugin.models import (
    Assignment,
    AuditEntry,
    BillingGroup,
    Customer,
    MailingList,
    Run,
    Server,
    utcnow,
)
from lm_billing_plugin.secrets import generate_key
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import Dataset, HostSim

SECRET = "pw-\u00e9t\u00e9-{x}"


@pytest.mark.parametrize(
    "host",
    [
        "lists.example.com",
        "lists.example.com.",
        "localhost",
        "a-b.c-d.example",
        "xn--bcher-kva.example",
        "127.0.0.1",
        "10.0.0.255",
        "::1",
        "2001:db8::8a2e:370:7334",
        "fe80::1%eth0",
        "a" * 63 + ".example",
    ],
)
def test_valid_host_names(host: str) -> None:
    assert registry.validate_host_name(host) is None


@pytest.mark.parametrize(
    ("host", "part"),
    [
        ("", "Enter the hosting server's host name"),
        ("https://lists.example.com", "not a URL"),
        ("lists.example.com/x", "without a path"),
        ("lists.example.com:2021", "without a port"),
        ("127.0.0.1:2021", "without a port"),
        ("[2001:db8::1]", "without brackets"),
        ("user@lists.example.com", "without a user name"),
        ("lists .example.com", "no spaces"),
        ("lists\texample.com", "no spaces"),
        ("b\u00fccher.example", "ASCII (xn--) form"),
        ("lists..example.com", "no empty parts"),
        (".example.com", "no empty parts"),
        ("lists_1.example.com", "not a valid part"),
        ("-lists.example.com", "not a valid part"),
        ("a" * 64 + ".example", "not a valid part"),
        ("1.2.3", "not a valid IPv4 address"),
        ("256.0.0.1", "not a valid IPv4 address"),
        ("x" * 254, "at most 253"),
    ],
)
def test_invalid_host_names_say_what_to_type(host: str, part: str) -> None:
    message = registry.validate_host_name(host)
    assert message is not None and part in message


def test_field_errors_are_keyed_by_field(app: Flask) -> None:
    with app.app_context():
        errors = registry.validate_server_fields(
            name="", host="http://x", port="70000", comments="c" * 2001, password="a\nb"
        )
        assert set(errors) == {"name", "host", "port", "comments", "password"}
        assert registry.validate_server_fields(name="x" * 101, host="h", port="x1")["name"]
        ok = registry.validate_server_fields(name="N", host="h.example", port="2021")
        assert ok == {}


def test_create_update_delete_on_each_database(any_db_app: Flask) -> None:
    with any_db_app.app_context():
        session = get_state().session
        server = registry.create_server(
            "Zürich {1}", "lists.example.com", 2021, " note ", SECRET, actor="alice"
        )
        assert server.comments == "note"
        assert registry.tclport_password(server.password_encrypted) == SECRET
        assert server.password_encrypted and SECRET not in server.password_encrypted
        with pytest.raises(registry.ServerFieldError) as dup:
            registry.create_server("Zürich {1}", "other.example", actor="alice")
        assert "already exists" in dup.value.errors["name"]
        # Exact comparison: case and trailing characters make another name.
        registry.create_server("zürich {1}", "other.example", actor="alice")

        # Changing the host without the password is refused while one is stored ...
        with pytest.raises(registry.ServerFieldError) as err:
            registry.update_server(server.id, host="new.example.com", actor="bob")
        assert "enter the TclPort password for the new host" in err.value.errors["password"]
        assert session.get(Server, server.id).host == "lists.example.com"  # type: ignore[union-attr]
        # ... accepted with a new one, or when the stored one is explicitly kept.
        registry.update_server(server.id, host="new.example.com", password="new-pw", actor="bob")
        changed = session.get(Server, server.id)
        assert changed is not None
        assert registry.tclport_password(changed.password_encrypted) == "new-pw"
        registry.update_server(server.id, host="third.example.com", keep_password=True, actor="bob")
        registry.update_server(server.id, password="", actor="bob")  # back to the default
        fresh = session.get(Server, server.id)
        assert fresh is not None and fresh.password_encrypted is None
        assert registry.tclport_password(fresh.password_encrypted) == "TCLPORTPasswd"
        # Without a stored password the host may change freely (the default is public).
        registry.update_server(server.id, host="fourth.example.com", port=2022, actor="bob")
        with pytest.raises(registry.ServerFieldError) as taken:
            registry.update_server(server.id, name="zürich {1}", actor="bob")
        assert set(taken.value.errors) == {"name"}

        audit = session.scalars(sa.select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [a.action for a in audit] == ["server_create"] * 2 + ["server_update"] * 4
        assert all(
            SECRET not in json.dumps(a.detail) and "new-pw" not in json.dumps(a.detail)
            for a in audit
        )
        assert audit[2].detail["changes"]["password"] == "changed"
        assert audit[2].actor == "bob"

        assert registry.delete_server(server.id, actor="carol") == "erased"
        assert session.get(Server, server.id) is None
        last = session.scalars(sa.select(AuditEntry).order_by(AuditEntry.id.desc())).first()
        assert last is not None and last.action == "server_delete"
        assert last.detail["name"] == "Zürich {1}" and last.object_id == server.id
        # The server's earlier audit rows stay, let go of the deleted server.
        assert session.scalar(sa.select(sa.func.count()).select_from(AuditEntry)) == 7


def test_delete_keeps_history_of_a_server_that_was_billed(app: Flask) -> None:
    with app.app_context():
        session = get_state().session
        server = registry.create_server("Billed", "lists.example.com", actor="alice")
        customer = Customer(company="ACME")
        session.add(customer)
        session.flush()
        group = BillingGroup(customer_id=customer.id, name="ACME lists")
        lst = MailingList(server_id=server.id, name="news")
        session.add_all([group, lst])
        session.flush()
        # An ended assignment counts too: the list was billed once.
        session.add(
            Assignment(
                group_id=group.id,
                object_type="list",
                server_id=server.id,
                list_id=lst.id,
                start_date=date.today() - timedelta(days=60),
                end_date=date.today(),
            )
        )
        session.add(Run(server_id=server.id, kind="validate", status="ok"))
        session.commit()

        assert registry.delete_server(server.id, actor="alice") == "deactivated"
        kept = session.get(Server, server.id)
        assert kept is not None and kept.active is False
        assert session.scalar(sa.select(sa.func.count()).select_from(MailingList)) == 1
        with pytest.raises(registry.ServerError, match="already deactivated"):
            registry.delete_server(server.id, actor="alice")
        with pytest.raises(registry.ServerFieldError) as err:
            registry.create_server("Billed", "lists.example.com", actor="alice")
        assert "deactivated server" in err.value.errors["name"]
        with pytest.raises(registry.UnknownServers):
            registry.servers_by_name(["Billed"])
        assert registry.servers_by_name(["Billed"], include_inactive=True)[0].id == server.id


def test_delete_refused_while_a_run_holds_the_server(app: Flask) -> None:
    with app.app_context():
        server = registry.create_server("Busy", "lists.example.com", actor="alice")
        server.lease_owner = "host:1"
        server.lease_expires_at = utcnow() + timedelta(minutes=5)
        get_state().session.commit()
        with pytest.raises(registry.ServerError, match="running now"):
            registry.delete_server(server.id, actor="alice")


def test_servers_by_name_reports_every_unknown_name(app: Flask) -> None:
    with app.app_context():
        registry.create_server("a", "a.example", actor="x")
        registry.create_server("b", "b.example", actor="x")
        assert [s.name for s in registry.servers_by_name(["b", "a"])] == ["b", "a"]
        with pytest.raises(registry.UnknownServers) as err:
            registry.servers_by_name(["a", "A", "c d"])
        assert err.value.names == ["A", "c d"]
        assert "'A', 'c d'" in str(err.value)


def test_no_encryption_key_is_a_password_field_error(make_app: Callable[..., Flask]) -> None:
    app = make_app(LM_BILLING_ENCRYPTION_KEYS=[])
    with app.app_context():
        with pytest.raises(registry.ServerFieldError) as err:
            registry.create_server("K", "k.example", password="x", actor="a")
        assert "LM_BILLING_ENCRYPTION_KEYS" in err.value.errors["password"]
        # The default password needs no key.
        registry.create_server("K", "k.example", actor="a")


def test_check_updates_status_and_a_changed_host_resets_it(app: Flask) -> None:
    with HostSim(Dataset.generate(lists=3)) as sim, app.app_context():
        server = registry.create_server("S", sim.host, sim.port, actor="a")
        connection, logging_report = registry.check_server(server.id, actor="a")
        assert connection.ok and logging_report is not None and logging_report.ok
        session = get_state().session
        fresh = session.get(Server, server.id)
        assert fresh is not None and fresh.status == "ok" and fresh.version == "12.3"
        registry.update_server(server.id, host="localhost", actor="a")
        fresh = session.get(Server, server.id)
        assert fresh is not None and fresh.status == "unchecked"


def test_check_with_an_undecryptable_password_says_what_to_do(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'keys.sqlite'}"
    first = make_app(url)
    with first.app_context():
        server_id = registry.create_server("K", "k.example", password=SECRET, actor="a").id
    # The key that encrypted the password was removed from LM_BILLING_ENCRYPTION_KEYS.
    second = make_app(url, create_tables=False, LM_BILLING_ENCRYPTION_KEYS=[generate_key()])
    with second.app_context():
        with pytest.raises(registry.ServerError) as err:
            registry.check_server(server_id, actor="a")
        assert "cannot be decrypted" in str(err.value) and "enter the password again" in str(
            err.value
        )
        assert SECRET not in str(err.value)
    result = second.test_cli_runner().invoke(args=["lm-billing", "servers", "check", "K"])
    assert result.exit_code == 2 and "cannot be decrypted" in result.output


def test_key_rotation_old_rows_still_decrypt_and_rotate_keys_re_encrypts(
    make_app: Callable[..., Flask], db_url: str
) -> None:
    """A new key put first: passwords stored under the old key still decrypt (the check
    sends them). ``flask lm-billing rotate-keys`` re-encrypts each with the new key, so the
    old key can then be removed; a password no key decrypts is named, left as it is, exit 2."""
    old_key, new_key, lost_key = generate_key(), generate_key(), generate_key()
    first = make_app(db_url, LM_BILLING_ENCRYPTION_KEYS=[old_key])
    with HostSim(Dataset.generate(lists=2), password=SECRET) as sim:
        with first.app_context():
            kept_id = registry.create_server("Kept", sim.host, sim.port, password=SECRET,
                                             actor="a").id
            default_id = registry.create_server("Default", "d.example", actor="a").id
        lost = make_app(db_url, create_tables=False, LM_BILLING_ENCRYPTION_KEYS=[lost_key])
        with lost.app_context():
            lost_id = registry.create_server("Lost", "l.example", password="gone",
                                             actor="a").id

        def tokens(app: Flask) -> dict[int, str | None]:
            with app.app_context():
                session = get_state().session
                out = {row.id: row.password_encrypted for row in session.execute(
                    sa.select(Server.id, Server.password_encrypted))}
                session.commit()
                return out

        before = tokens(first)
        rotated = make_app(db_url, create_tables=False,
                           LM_BILLING_ENCRYPTION_KEYS=[new_key, old_key])
        with rotated.app_context():
            # Old rows decrypt with the old key kept after the new one.
            connection, _logging = registry.check_server(kept_id, actor="a")
            assert connection.ok, connection
        result = rotated.test_cli_runner().invoke(args=["lm-billing", "rotate-keys"])
        assert result.exit_code == 2, result.output
        assert "Re-encrypted 1 stored TclPort password(s)" in result.output
        assert "server 'Lost': its stored password cannot be decrypted" in result.output
        assert SECRET not in result.output and "gAAAA" not in result.output
        after = tokens(rotated)
        assert after[kept_id] != before[kept_id] and after[kept_id] is not None
        assert after[lost_id] == before[lost_id]  # untouched, to be entered again
        assert after[default_id] is None  # the default password stays "none stored"

        # The old key removed: the re-encrypted password still reaches the server.
        new_only = make_app(db_url, create_tables=False, LM_BILLING_ENCRYPTION_KEYS=[new_key])
        with new_only.app_context():
            connection, _logging = registry.check_server(kept_id, actor="a")
            assert connection.ok, connection
            session = get_state().session
            entry = session.scalars(sa.select(AuditEntry)
                                    .where(AuditEntry.action == "rotate_keys")).one()
            assert entry.detail == {"rotated": 1, "unreadable": ["Lost"]}
            session.commit()

    # All readable: exit 0 and the old keys may go; no key at all: exit 2, says which setting.
    with new_only.app_context():
        registry.update_server(lost_id, password="typed again", keep_password=False,
                               actor="a")
    again = new_only.test_cli_runner().invoke(args=["lm-billing", "rotate-keys"])
    assert again.exit_code == 0, again.output
    assert "Re-encrypted 2 stored TclPort password(s)" in again.output
    assert "The keys after the first one can now be removed." in again.output
    none = make_app(db_url, create_tables=False, LM_BILLING_ENCRYPTION_KEYS=[])
    refused = none.test_cli_runner().invoke(args=["lm-billing", "rotate-keys"])
    assert refused.exit_code == 2
    assert "LM_BILLING_ENCRYPTION_KEYS is not set" in refused.output
