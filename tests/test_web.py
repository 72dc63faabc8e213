"""The HTTP API of `wemixvisor web` (SPEC §18) against a real daemon running a real anvil.

An operator's console is its own process; every route is one control verb of the daemon; the
token guards every request; control errors keep their code and get the matching HTTP status.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from devtools.anvil import free_port
from tests.control_harness import control_endpoint, make_home, short_root, wait_status
from tests.daemon_harness import Daemon
from tests.web_harness import JournalKeeper, WebConsole, start_anvil_daemon, wait_http
from wemixvisor.control import ControlClient
from wemixvisor.control.verbs import VERBS
from wemixvisor.home.layout import Home
from wemixvisor.web import MAX_BODY_BYTES, daemon_id
from wemixvisor.web.routes import ROUTES


@dataclass
class Setup:
    root: Path
    home: Path
    daemon: Daemon
    console: WebConsole
    rpc_port: int


@pytest.fixture(scope="module")
def setup(anvil_bin_1_5_1: Path) -> Iterator[Setup]:
    """One home with its daemon (anvil 1.5.1, 1 s blocks) and a console for it."""
    with short_root() as root:
        home = make_home(root, anvil_bin_1_5_1)
        port = free_port()
        daemon = start_anvil_daemon(home, port)
        daemons = [daemon]
        try:
            with ControlClient(control_endpoint(home), timeout=2.0) as client:
                wait_status(client, lambda s: s["node"]["state"] == "RUNNING", timeout=60)
            with WebConsole(home) as console:
                console.wait_ready()
                setup = Setup(root, home, daemon, console, port)
                yield setup
                daemons.append(setup.daemon)  # a test may have restarted it
        finally:
            for started in daemons:
                started.kill()


def wait_head(console: WebConsole, at_least: int, timeout: float = 30.0) -> int:
    """The head the daemon reports once it is at least `at_least`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        head = (wait_http(console, "/api/v1/status", 200).json()["head"] or {}).get("height")
        if head is not None and head >= at_least:
            return int(head)
        time.sleep(0.1)
    raise AssertionError(f"head below {at_least} after {timeout}s")


def concrete(path: str) -> str:
    return path.replace("{name}", "no-such-plan").replace("{id}", "no-such-backup")


def test_every_route_refuses_a_request_without_the_token_or_with_a_wrong_one(
    setup: Setup,
) -> None:
    client = setup.console.client
    paths = [(r.method, "/api/v1" + concrete(r.path)) for r in ROUTES]
    paths += [(r.method, "/api/v1/daemons/x" + concrete(r.path)) for r in ROUTES]
    paths += [
        ("GET", "/api/v1/events"),
        ("GET", "/api/v1/daemons"),
        ("GET", "/api/v1/openapi.json"),
    ]
    for method, path in paths:
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong-token-value"}):
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"]["code"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
    # The token in the query is taken only by the event stream, and only the right one.
    token = setup.console.token
    wrong = client.get("/api/v1/events?access_token=nope", headers={"Authorization": ""})
    assert wrong.status_code == 401
    assert (
        client.get(
            f"/api/v1/status?access_token={token}", headers={"Authorization": ""}
        ).status_code
        == 401
    )


def test_the_page_is_served_with_a_strict_policy_and_no_cookie(setup: Setup) -> None:
    page = setup.console.client.get("/", headers={"Authorization": ""})
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in page.headers
    assert "<script" in page.text and "<script>" not in page.text, "no inline script"
    script = setup.console.client.get("/static/console.js", headers={"Authorization": ""})
    assert (
        script.status_code == 200 and "innerHTML" not in script.text and "eval(" not in script.text
    )


def test_each_route_answers_with_its_verbs_reply(setup: Setup) -> None:
    console = setup.console
    status = wait_http(console, "/api/v1/status", 200).json()
    assert VERBS["status"].decode_reply(status).node.state == "RUNNING"
    assert status["daemon"]["home"] == str(setup.home)
    version = console.get("/api/v1/version").json()
    assert version["events_endpoint"] == f"ipc://{setup.home}/wemixvisor/events.sock"
    logs = console.get("/api/v1/logs", params={"n": 3}).json()
    assert logs["exists"] and len(logs["lines"]) <= 3
    for path, verb in [
        ("/api/v1/upgrades", "list_upgrades"),
        ("/api/v1/backups", "backup_list"),
        ("/api/v1/config", "config_show"),
        ("/api/v1/governance/proposals", "governance_proposals"),
    ]:
        response = console.get(path)
        assert response.status_code == 200, (path, response.text)
        VERBS[verb].decode_reply(response.json())
    pending = console.get("/api/v1/upgrades/status").json()
    assert pending["pending"] == [] and pending["daemon"]["running"] is True


def test_scheduling_and_cancelling_a_plan_and_the_errors_an_operator_meets(setup: Setup) -> None:
    console = setup.console
    head = wait_head(console, 3)
    height = head + 10_000
    scheduled = console.client.post("/api/v1/upgrades", json={"name": "v2", "height": height})
    assert scheduled.status_code == 200, scheduled.text
    assert scheduled.json()["outcome"] == "added"
    plans = console.get("/api/v1/upgrades").json()["plans"]
    assert [(p["name"], p["height"], p["status"]) for p in plans] == [("v2", height, "pending")]
    readiness = plans[0]["readiness"]
    assert readiness["binary_staged"] is False, "no upgrades/v2/bin/anvil"
    assert readiness["checksum_verified"] is None, "nothing was downloaded"
    assert readiness["hooks_present"] is True, "no custom pre-upgrade script is configured"
    assert readiness["preflight_ok"] in (None, False), "the binary is missing"

    # A passed height without `now` is refused by the queue's rules: 409 with the daemon's words.
    late = console.client.post("/api/v1/upgrades", json={"name": "v3", "height": 1})
    assert late.status_code == 409, late.text
    assert late.json()["error"]["code"] == "conflict"

    cancelled = console.client.delete("/api/v1/upgrades/v2")
    assert cancelled.status_code == 200 and cancelled.json()["cancelled"] is True
    again = console.client.delete("/api/v1/upgrades/v2")
    assert again.status_code == 409 or again.json()["already_cancelled"], again.text
    unknown = console.client.delete("/api/v1/upgrades/never-scheduled")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"name": "v9"}', "height"),
        (b'{"name": "v9", "height": 5, "colour": "red"}', "colour"),
        (b'{"name": 5, "height": 5}', "name"),
        (b'{"id": 1, "name": "v9", "height": 5}', "id"),
        (b'{"type": "stop", "name": "v9", "height": 5}', "type"),
    ],
)
def test_a_bad_body_is_400_with_the_error_body(setup: Setup, body: bytes, words: str) -> None:
    response = setup.console.client.post(
        "/api/v1/upgrades", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request" and words in error["message"]


def test_bad_queries_oversized_bodies_and_unknown_routes(setup: Setup) -> None:
    client = setup.console.client
    assert client.get("/api/v1/logs", params={"n": "many"}).status_code == 400
    assert client.get("/api/v1/logs", params={"n": 0}).status_code == 400
    huge = b'{"name": "v9", "height": 5, "info": "' + b"x" * MAX_BODY_BYTES + b'"}'
    response = client.post("/api/v1/upgrades", content=huge)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"
    assert client.get("/api/v1/nothing-here").status_code == 404
    assert client.put("/api/v1/status").status_code == 405
    missing = client.post("/api/v1/backups/no-such-backup/restore")
    assert missing.status_code == 404, missing.text
    # DELETE /backups/{id} is the backup_delete verb: 501 while the daemon has none.
    deleted = client.delete("/api/v1/backups/no-such-backup")
    assert deleted.status_code == (404 if "backup_delete" in VERBS else 501), deleted.text


def test_the_openapi_document_is_generated_from_the_verbs(setup: Setup) -> None:
    document = setup.console.get("/api/v1/openapi.json").json()
    schemas = document["components"]["schemas"]
    for route in ROUTES:
        if route.verb not in VERBS:
            continue
        operation = document["paths"]["/api/v1" + route.path][route.method.lower()]
        assert operation["x-control-verb"] == route.verb
        reply = (route.reply_type or VERBS[route.verb].reply_type).__name__
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{reply}"
        }
        assert reply in schemas
        assert "/api/v1/daemons/{daemon}" + route.path in document["paths"]
    body = document["paths"]["/api/v1/upgrades"]["post"]["requestBody"]["content"]
    properties = body["application/json"]["schema"]["properties"]
    assert {"name", "height", "info", "now"} <= set(properties) and "id" not in properties


def test_the_fleet_lists_its_daemon_with_a_stable_id(setup: Setup) -> None:
    daemons = setup.console.get("/api/v1/daemons").json()["daemons"]
    endpoint = control_endpoint(setup.home)
    assert daemons == [
        {
            "id": daemon_id(endpoint),
            "control_endpoint": endpoint,
            "events_endpoint": f"ipc://{setup.home}/wemixvisor/events.sock",
            "reachable": True,
            "error": None,
        }
    ]
    prefixed = setup.console.get(f"/api/v1/daemons/{daemon_id(endpoint)}/status")
    assert prefixed.status_code == 200
    unknown = setup.console.get("/api/v1/daemons/nobody/status")
    assert unknown.status_code == 404 and "nobody" in unknown.json()["error"]["message"]


def test_a_late_event_stream_client_gets_the_journal_from_since_then_live_with_no_gap(
    setup: Setup,
) -> None:
    home = Home(root=setup.home, name="anvil", data_dir=setup.home / "data")
    keeper = JournalKeeper(home, f"ipc://{setup.home}/wemixvisor/events.sock")
    try:
        keeper.wait_count(8)
        assert keeper.first is not None
        since, run = keeper.first["seq"] + 2, keeper.first["run_id"]
        seen: list[tuple[str, int]] = []
        with setup.console.client.stream(
            "GET",
            "/api/v1/events",
            params={"since": since, "run": run, "access_token": setup.console.token},
            headers={"Authorization": ""},
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            replayed_until = keeper.count
            for line in stream.iter_lines():
                if line.startswith("id: "):
                    stream_run, _, seq = line[4:].rpartition(":")
                    seen.append((stream_run, int(seq)))
                elif line.startswith("data: "):
                    payload = msgspec.json.decode(line[6:])
                    assert (payload["run_id"], payload["seq"]) == seen[-1]
                if len(seen) >= replayed_until + 6:
                    break
        assert seen[0] == (run, since)
        assert [seq for _, seq in seen] == list(range(since, since + len(seen))), (
            "no gap, no repeat"
        )
        assert {r for r, _ in seen} == {run}
        # A client that lost its connection resumes right after the last event it got.
        last_run, last_seq = seen[-1]
        with setup.console.client.stream(
            "GET", "/api/v1/events", headers={"Last-Event-ID": f"{last_run}:{last_seq}"}
        ) as resumed:
            first_id = next(line for line in resumed.iter_lines() if line.startswith("id: "))
        assert first_id == f"id: {last_run}:{last_seq + 1}"
    finally:
        keeper.close()


def test_a_down_daemon_is_503_with_a_clear_message_and_its_return_is_200(setup: Setup) -> None:
    console = setup.console
    wait_http(console, "/api/v1/status", 200)
    with console.client.stream("GET", "/api/v1/events") as stream:
        lines = stream.iter_lines()
        before = _next_event(lines)
        assert setup.daemon.terminate() == 0
        # (a status up to 100 ms old may still be answered from the console's memory)
        down = wait_http(console, "/api/v1/status", 503, timeout=20)
        error = down.json()["error"]
        assert error["code"] == "unreachable"
        assert control_endpoint(setup.home) in error["message"]
        assert console.process.poll() is None, "the console lives on"
        setup.daemon = start_anvil_daemon(setup.home, setup.rpc_port)
        back = wait_http(console, "/api/v1/status", 200, timeout=60)
        assert back.json()["daemon"]["pid"] == setup.daemon.pid
        # The open event stream goes on with the new daemon run's events.
        new_run = back.json()["daemon"]["run_id"]
        deadline = time.monotonic() + 30
        event = before
        while event["run_id"] != new_run:
            assert time.monotonic() < deadline, "no event of the new run on the open stream"
            event = _next_event(lines)
    assert before["run_id"] != new_run


def _next_event(lines: Iterator[str]) -> dict[str, Any]:
    """The next event of an SSE stream (heartbeat comments skipped)."""
    for line in lines:
        if line.startswith("data: "):
            payload: dict[str, Any] = msgspec.json.decode(line[6:])
            return payload
    raise AssertionError("the event stream ended")


def test_a_non_loopback_listen_without_tls_is_refused(setup: Setup) -> None:
    env = {**os.environ, "DAEMON_HOME": str(setup.home), "DAEMON_NAME": "anvil"}
    refused = subprocess.run(
        [sys.executable, "-m", "wemixvisor.cli", "web", "--listen", "0.0.0.0:0"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2
    assert "not a loopback address" in refused.stderr and "--tls-cert" in refused.stderr
    url = subprocess.run(
        [
            sys.executable,
            "-m",
            "wemixvisor.cli",
            "web",
            "--print-url",
            "--listen",
            "127.0.0.1:9999",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert url.stdout.strip() == f"http://127.0.0.1:9999/#token={setup.console.token}"
    token = subprocess.run(
        [sys.executable, "-m", "wemixvisor.cli", "web", "--print-token"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert token.stdout.strip() == setup.console.token
    token_file = setup.home / "wemixvisor" / "web.token"
    assert token_file.stat().st_mode & 0o777 == 0o600


def test_with_tls_the_console_serves_https_only(setup: Setup) -> None:
    cert, key = setup.root / "cert.pem", setup.root / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    env = {**os.environ, "DAEMON_HOME": str(setup.home), "DAEMON_NAME": "anvil"}
    console = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wemixvisor.cli",
            "web",
            "--listen",
            f"127.0.0.1:{port}",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(verify=trusted, trust_env=False, timeout=5) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    response = client.get(
                        f"https://127.0.0.1:{port}/api/v1/version",
                        headers={"Authorization": f"Bearer {setup.console.token}"},
                    )
                    break
                except httpx.ConnectError as exc:
                    if "CERTIFICATE" in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        assert response.status_code == 200
        with httpx.Client(trust_env=False, timeout=5) as plain, pytest.raises(httpx.TransportError):
            plain.get(f"http://127.0.0.1:{port}/")
    finally:
        console.terminate()
        console.wait(timeout=10)
