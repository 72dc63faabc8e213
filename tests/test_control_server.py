"""The control server on real sockets (SPEC §11): whatever a client sends, every other client
keeps being served; access control for ipc (file modes) and tcp (CURVE)."""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.anvil import free_port
from tests.control_harness import WellBehavedClient
from wemixvisor.control import ControlClient, ControlError, ControlUnreachable
from wemixvisor.control.protocol import MAX_FRAME_BYTES, Request
from wemixvisor.control.protocol import ControlError as ProtocolError
from wemixvisor.control.security import (
    CurveClientKeys,
    generate_keys,
    load_client_keys,
    load_server_curve,
)
from wemixvisor.control.server import ControlServer
from wemixvisor.home.ipc import EndpointError

SLOW = 9_999  # `logs` with this many lines is the slow request of these tests


def dispatch(request: Request) -> Any:
    """A stand-in daemon: `status` answers at once, `logs` of SLOW lines takes a second."""
    if request.verb == "logs" and getattr(request, "lines", 0) == SLOW:
        time.sleep(1.0)
        return {"slow": True}
    if request.verb == "cancel_upgrade":
        raise ProtocolError("not_found", "no such plan")
    return {"verb": request.verb, "id": request.id}


@pytest.fixture
def root(short_root: Path) -> Path:
    return short_root


@pytest.fixture
def server(root: Path) -> Iterator[ControlServer]:
    served = ControlServer(f"ipc://{root}/run/control.sock", dispatch)
    served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def dealer(server: ControlServer) -> Iterator[zmq.Socket[bytes]]:
    """A raw DEALER: it can send any multipart shape a REQ socket never would."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    sock.connect(server.endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        context.term()


def reply_of(frames: list[bytes]) -> dict[str, Any]:
    reply: dict[str, Any] = msgspec.json.decode(frames[-1])
    return reply


def test_the_socket_file_is_0600_in_a_0700_directory_and_removed_at_stop(root: Path) -> None:
    path = root / "private" / "control.sock"
    served = ControlServer(f"ipc://{path}", dispatch)
    served.start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_ISSOCK(path.stat().st_mode)
    finally:
        served.stop()
    assert not path.exists()


def test_a_stale_socket_file_is_replaced_and_a_live_one_refused(root: Path) -> None:
    path = root / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(os.fspath(path))
    stale.close()  # bound, never listened: what a killed daemon leaves behind
    first = ControlServer(f"ipc://{path}", dispatch)
    first.start()
    try:
        with ControlClient(f"ipc://{path}", 2.0) as client:
            assert client.request({"type": "status"})["verb"] == "status"
        second = ControlServer(f"ipc://{path}", dispatch)
        with pytest.raises(EndpointError, match="another process is listening"):
            second.start()
        with ControlClient(f"ipc://{path}", 2.0) as client:
            assert client.request({"type": "status"})["verb"] == "status"
    finally:
        first.stop()


def test_replies_carry_the_request_id_and_error_codes(server: ControlServer) -> None:
    with ControlClient(server.endpoint, 2.0) as client:
        assert client.request({"id": "abc", "type": "version"}) == {"verb": "version", "id": "abc"}
        with pytest.raises(ControlError) as caught:
            client.request({"type": "cancel_upgrade", "name": "v9"})
        assert (caught.value.code, caught.value.message) == ("not_found", "no such plan")
        with pytest.raises(ControlError) as caught:
            client.request({"type": "reboot"})
        assert caught.value.code == "unknown_type"
        with pytest.raises(ControlError) as caught:
            client.request({"type": "logs", "lines": "many"})
        assert caught.value.code == "bad_request"


frames_strategy = st.lists(st.binary(max_size=200), min_size=0, max_size=4)
json_garbage = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["id", "type", "lines", "name", "height", "info", "now", "x"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.one_of(
        frames_strategy,
        json_garbage.map(lambda value: [b"", msgspec.json.encode(value)]),
        st.sampled_from(sorted(["status", "logs", "bogus", "schedule_upgrade", "stop"])).flatmap(
            lambda verb: json_garbage.map(
                lambda value: [
                    b"",
                    msgspec.json.encode(
                        {"id": 1, "type": verb, **(value if isinstance(value, dict) else {})}
                    ),
                ]
            )
        ),
    )
)
def test_garbage_gets_error_replies_while_a_good_client_is_served(
    server: ControlServer, dealer: zmq.Socket[bytes], frames: list[bytes]
) -> None:
    with WellBehavedClient(server.endpoint) as good:
        if not frames:
            frames = [b""]
        dealer.send_multipart(frames)
        reply = reply_of(dealer.recv_multipart())
        assert set(reply) in ({"id", "ok", "result"}, {"id", "ok", "error"})
        if not reply["ok"]:
            assert reply["error"]["code"] in ("bad_request", "unknown_type", "not_found")
        # Enough time for the good client to be served alongside.
        deadline = time.monotonic() + 1.0
        while good.served < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
    good.assert_served_throughout(minimum=1)


def test_oversized_frames_get_an_error_or_a_closed_connection_never_a_wedged_server(
    server: ControlServer, dealer: zmq.Socket[bytes]
) -> None:
    with WellBehavedClient(server.endpoint) as good:
        dealer.send_multipart([b"", b'{"id": 1, "type": "status", "pad": "' + b"x" * 3_000_000])
        reply = reply_of(dealer.recv_multipart())
        assert reply["error"]["code"] == "bad_request"
        assert "over the" in reply["error"]["message"]
        # Over ZeroMQ's own cap the connection is cut before the frame is read: no reply.
        dealer.send_multipart([b"", b"y" * (MAX_FRAME_BYTES + 1)])
        assert dealer.poll(500) == 0
    good.assert_served_throughout()


def test_clients_that_vanish_mid_request_do_not_wedge_the_server(server: ControlServer) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        with WellBehavedClient(server.endpoint) as good:
            for _ in range(20):
                sock = context.socket(zmq.REQ)
                sock.connect(server.endpoint)
                sock.send(msgspec.json.encode({"id": 1, "type": "logs", "lines": SLOW}))
                sock.close(linger=0)
            # The slow requests finish with nobody to answer; everyone else is still served.
            deadline = time.monotonic() + 10
            while server.dropped + server.served < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            with ControlClient(server.endpoint, 5.0) as late:
                assert late.request({"type": "logs", "lines": SLOW}) == {"slow": True}
    finally:
        context.term()
    good.assert_served_throughout()


def test_too_many_waiting_requests_are_answered_busy(root: Path) -> None:
    served = ControlServer(f"ipc://{root}/busy.sock", dispatch, workers=1, max_pending=2)
    served.start()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    try:
        sock.connect(served.endpoint)
        for number in range(4):
            sock.send_multipart(
                [b"", msgspec.json.encode({"id": number, "type": "logs", "lines": SLOW})]
            )
        replies = {}
        for _ in range(4):
            reply = reply_of(sock.recv_multipart())
            replies[reply["id"]] = reply
        busy = [r for r in replies.values() if not r["ok"]]
        assert [r["error"]["code"] for r in busy] == ["busy", "busy"]
        assert sum(1 for r in replies.values() if r["ok"]) == 2
    finally:
        sock.close(linger=0)
        context.term()
        served.stop()


def test_a_missing_daemon_is_reported_with_its_endpoint_without_a_hang(root: Path) -> None:
    endpoint = f"ipc://{root}/none.sock"
    began = time.monotonic()
    with ControlClient(endpoint, 5.0) as client, pytest.raises(ControlUnreachable) as caught:
        client.request({"type": "status"})
    assert time.monotonic() - began < 1.0, "an absent ipc socket fails at once"
    assert endpoint in str(caught.value)
    tcp = f"tcp://127.0.0.1:{free_port()}"
    began = time.monotonic()
    with ControlClient(tcp, 0.5) as client, pytest.raises(ControlUnreachable) as caught:
        client.request({"type": "status"})
    assert 0.4 < time.monotonic() - began < 3.0
    assert tcp in str(caught.value)


def test_tcp_with_curve_serves_only_authorized_clients(root: Path) -> None:
    keys = root / "keys"
    generate_keys(keys)
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in keys.rglob("*") if p.is_file())
    curve = load_server_curve(keys)
    authorized = load_client_keys(keys)
    assert curve is not None
    assert authorized is not None
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    served = ControlServer(endpoint, dispatch, curve=curve)
    served.start()
    try:
        with WellBehavedClient(endpoint, curve=authorized) as good:
            stranger_public, stranger_secret = zmq.curve_keypair()
            stranger = CurveClientKeys(curve.public, stranger_public, stranger_secret)
            for keys_used in (stranger, None):
                with (
                    ControlClient(endpoint, 0.7, curve=keys_used) as client,
                    pytest.raises(ControlUnreachable),
                ):
                    client.request({"type": "status"})
            time.sleep(0.2)
        good.assert_served_throughout()
        # An operator allows the stranger in: picked up without a restart.
        (keys / "authorized" / "stranger.key").write_text(
            'curve\n    public-key = "' + stranger_public.decode() + '"\n'
        )
        deadline = time.monotonic() + 10
        with ControlClient(endpoint, 0.5, curve=stranger) as client:
            while True:
                try:
                    assert client.request({"type": "status"})["verb"] == "status"
                    break
                except ControlUnreachable:
                    assert time.monotonic() < deadline, "an added key was never accepted"
    finally:
        served.stop()
