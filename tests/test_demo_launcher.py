"""`python -m lm_billing_plugin.demo` as a user runs it: a subprocess with its own instance
folder and port, three simulated servers on the Billing page, restarts, a clean stop."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from lm_billing_plugin.demo import DEMO_PASSWORD

NAMES = ("Demo: healthy", "Demo: logging off", "Demo: refuses billing")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def launched(instance: Path, port: int) -> Iterator[tuple[str, dict[str, int], list[str]]]:
    """Run the launcher; yield (portal URL, simulator port by name, output lines so far)."""
    env = {
        **os.environ,
        "FLASK_INSTANCE_PATH": str(instance),
        "LM_BILLING_DEMO_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "lm_billing_plugin.demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        url = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            found = re.search(r"Portal:\s+(http://127\.0\.0\.1:\d+/)", line)
            if found:
                url = found.group(1)
            if "Stop with Ctrl+C" in line:
                break
        assert url, "launcher did not print its URL:\n" + "\n".join(lines)
        sims = {}
        for name in NAMES:
            row = next(x for x in lines if x.strip().startswith(name))
            sims[name] = int(re.search(r"127\.0\.0\.1:(\d+)", row).group(1))  # type: ignore[union-attr]
        yield url, sims, lines
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rest, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
        lines.extend(rest.splitlines())
        assert proc.returncode == 0, "\n".join(lines)


def login_and_get(url: str, path: str) -> str:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(url + "login", timeout=10).read().decode()
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert token, page
    data = urllib.parse.urlencode(
        {"csrf_token": token.group(1), "username": "viewer", "password": DEMO_PASSWORD}
    ).encode()
    opener.open(url + "login", data=data, timeout=10).read()
    body: bytes = opener.open(url + path.lstrip("/"), timeout=30).read()
    return body.decode()


def servers_in(db: Path) -> list[tuple[str, str, int, int]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(
            "SELECT name, host, port, active FROM lm_billing_server ORDER BY name"
        ).fetchall()


def test_demo_launcher_serves_three_servers_and_stops_them(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    port = free_port()
    with launched(instance, port) as (url, sims, lines):
        assert url == f"http://127.0.0.1:{port}/"
        assert any("operator" in x and "viewer" in x and DEMO_PASSWORD in x for x in lines)
        billing = login_and_get(url, "/billing/")
        for name in NAMES:
            assert name in billing
        assert all(listening(p) for p in sims.values())
        rows = servers_in(instance / "demo.sqlite")
        assert [(r[0], r[2]) for r in rows] == [(n, sims[n]) for n in NAMES]
        time.sleep(2.5)  # the scheduler ticks every second once the portal served a request
        with closing(sqlite3.connect(instance / "demo.sqlite")) as conn:
            statuses = dict(conn.execute("SELECT name, status FROM lm_billing_server"))
            groups = conn.execute("SELECT name FROM lm_billing_group").fetchall()
            validated = conn.execute(
                "SELECT count(*) FROM lm_billing_server WHERE validated_at IS NOT NULL"
            ).fetchone()
        # Checked at start, but left for the person to validate (no background run yet).
        assert validated == (0,)
        assert statuses["Demo: healthy"] == "ok"
        assert statuses["Demo: logging off"] == "logging_off"
        assert statuses["Demo: refuses billing"] == "host_denied"
        assert groups == [("Acme newsletters",)]
    assert not any(listening(p) for p in sims.values())
    assert not listening(port)

    # A restart keeps the same three rows (same ids), moved to the simulators' new ports.
    ids_before = [r[0] for r in servers_in(instance / "demo.sqlite")]
    with launched(instance, free_port()) as (_url, sims2, _lines):
        rows = servers_in(instance / "demo.sqlite")
        assert [r[0] for r in rows] == ids_before
        assert [r[2] for r in rows] == [sims2[n] for n in NAMES]
    assert not any(listening(p) for p in sims2.values())


def test_demo_launcher_port_in_use_says_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "FLASK_INSTANCE_PATH": str(tmp_path),
            "LM_BILLING_DEMO_PORT": str(port),
        }
        proc = subprocess.run(
            [sys.executable, "-m", "lm_billing_plugin.demo"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2
    assert f"Cannot serve on 127.0.0.1:{port}" in proc.stderr
    assert "LM_BILLING_DEMO_PORT" in proc.stderr
