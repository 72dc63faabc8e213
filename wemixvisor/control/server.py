"""The control socket's server: a ROUTER on its own thread, requests carried out by a pool.

The ROUTER thread only moves bytes: it reads a request, decodes it, and hands it to a worker
thread; workers hand the encoded reply back through a queue and wake the ROUTER thread with a
pipe it polls. Nothing on that thread waits for an actor, so one slow request never holds up
the others, and a client that disappears mid-request only loses its own reply (ROUTER drops a
reply to a peer that is gone). Every malformed message that can be answered gets an error reply:
wrong multipart shapes, frames over the size limit, bad JSON, unknown types, wrong field types.
A frame over ZeroMQ's own limit (`MAX_FRAME_BYTES`) closes that client's connection instead.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import zmq
from loguru import logger
from zmq.auth.thread import ThreadAuthenticator

from wemixvisor.control.protocol import (
    MAX_FRAME_BYTES,
    ControlError,
    DecodeFailure,
    ErrorCode,
    Request,
    decode_request,
    encode_error,
    encode_ok,
)
from wemixvisor.control.security import ServerCurve
from wemixvisor.home.ipc import EndpointError, prepare_socket_file

__all__ = ["ControlServer", "Dispatch", "check_bindable"]

Dispatch = Callable[[Request], Any]
"""Carries out one request and returns its result; raises ControlError to refuse it."""

_ZAP_DOMAIN = b"wemixvisor"
_MAX_ENVELOPE_FRAMES = 8
_DRAIN_BATCH = 256
_KEYS_RECHECK = 2.0  # seconds between looks at keys/authorized for added or removed clients


def check_bindable(endpoint: str, what: str = "control") -> None:
    """EndpointError now when the tcp `endpoint` cannot be bound (its port is taken).

    The daemon asks before it starts anything: a port in use is a startup error the operator
    reads at once, not a socket its supervisor retries binding in the background. ipc
    endpoints are checked by the socket file's own preparation at bind time.
    """
    if not endpoint.startswith("tcp://"):
        return
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = context.socket(zmq.ROUTER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            if endpoint.startswith("tcp://["):
                sock.setsockopt(zmq.IPV6, 1)
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise EndpointError(
                f"cannot bind {what} endpoint {endpoint}: {exc.strerror} (is another program "
                "listening there? choose a free port or an ipc:// endpoint)"
            ) from None
        finally:
            sock.close(linger=0)
    finally:
        context.term()


class ControlServer:
    """Serves the control protocol on `endpoint`, calling `dispatch` for each request.

    `start()` binds (raising EndpointError if it cannot) and returns once the socket listens;
    `stop()` closes it and removes the ipc socket file. `workers` requests are carried out at
    once; beyond `max_pending` requests waiting, new ones are answered `busy` at once.
    `on_crash` is called (from the server thread) if the serving loop dies of an unexpected
    error, so that its owner can restart it.
    """

    def __init__(
        self,
        endpoint: str,
        dispatch: Dispatch,
        *,
        curve: ServerCurve | None = None,
        workers: int = 32,
        max_pending: int = 256,
        on_crash: Callable[[BaseException], None] | None = None,
        quick: Callable[[Request], tuple[Any] | None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._dispatch = dispatch
        self._quick = quick
        self._curve = curve
        self._workers = workers
        self._max_pending = max_pending
        self._on_crash = on_crash
        self._replies: queue.SimpleQueue[tuple[list[bytes], bytes]] = queue.SimpleQueue()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._bind_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._bound: str | None = None
        self._socket_file: tuple[Path, int, int] | None = None
        self._pending = 0  # requests handed to workers and not yet answered (server thread only)
        self.served = 0
        self.dropped = 0

    @property
    def bound_endpoint(self) -> str | None:
        """The endpoint actually bound (resolves `tcp://127.0.0.1:*`); None before `start`."""
        return self._bound

    def start(self, timeout: float = 10.0) -> None:
        """Bind and start serving; EndpointError if the endpoint cannot be bound."""
        if self._thread is not None:
            raise RuntimeError("control server already started")
        self._thread = threading.Thread(target=self._run, name="control-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise EndpointError(f"control server did not bind {self.endpoint} within {timeout}s")
        if self._bind_error is not None:
            self._thread.join(timeout)
            self._close_pipe()
            raise self._bind_error

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving: close the socket, finish the requests in progress (their replies are
        dropped), remove the socket file."""
        self._stopping.set()
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.error("control server thread did not stop within {}s", timeout)
                return
        self._close_pipe()

    def _run(self) -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        auth: ThreadAuthenticator | None = None
        sock: zmq.Socket[bytes] | None = None
        executor: ThreadPoolExecutor | None = None
        try:
            try:
                auth = self._start_authenticator(context)
                sock = self._bind(context)
            except Exception as exc:  # noqa: BLE001 - handed to start() as the bind's failure
                self._bind_error = (
                    exc
                    if isinstance(exc, EndpointError)
                    else EndpointError(f"cannot bind control endpoint {self.endpoint}: {exc}")
                )
                return
            finally:
                self._ready.set()
            executor = ThreadPoolExecutor(self._workers, thread_name_prefix="control-worker")
            self._serve(sock, executor, auth)
        except Exception as exc:  # noqa: BLE001 - reported to the owner, which restarts it
            logger.exception("control server failed")
            if self._on_crash is not None:
                self._on_crash(exc)
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
            if sock is not None:
                sock.close(linger=0)
            if auth is not None:
                auth.stop()
            context.term()
            self._remove_socket_file()

    def _start_authenticator(
        self, context: zmq.Context[zmq.Socket[bytes]]
    ) -> ThreadAuthenticator | None:
        if self._curve is None:
            return None
        auth = ThreadAuthenticator(context)
        auth.start()
        auth.configure_curve(domain=_ZAP_DOMAIN.decode(), location=str(self._curve.authorized_dir))
        return auth

    def _bind(self, context: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
        socket_file = self._prepare_ipc_file()
        sock = context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RCVHWM, 1000)
        if self.endpoint.startswith("tcp://["):
            sock.setsockopt(zmq.IPV6, 1)
        if self._curve is not None:
            sock.setsockopt(zmq.ZAP_DOMAIN, _ZAP_DOMAIN)
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self._curve.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self._curve.secret)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise EndpointError(f"cannot bind control endpoint {self.endpoint}: {exc}") from exc
        last = sock.getsockopt(zmq.LAST_ENDPOINT)
        self._bound = last.decode() if isinstance(last, bytes) else self.endpoint
        if socket_file is not None:
            # Between bind and chmod the file has the umask's mode; the 0700 directory keeps
            # other users out during that moment.
            os.chmod(socket_file, 0o600)
            st = os.lstat(socket_file)
            self._socket_file = (socket_file, st.st_dev, st.st_ino)
        logger.info(
            "control socket on {}{}", self._bound, " (CURVE)" if self._curve is not None else ""
        )
        return sock

    def _prepare_ipc_file(self) -> Path | None:
        return prepare_socket_file(self.endpoint, "control")

    def _remove_socket_file(self) -> None:
        record, self._socket_file = self._socket_file, None
        if record is None:
            return
        path, dev, ino = record
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        # Only our own file: a successor may already have bound a new socket at this path.
        if (st.st_dev, st.st_ino) == (dev, ino):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _serve(
        self,
        sock: zmq.Socket[bytes],
        executor: ThreadPoolExecutor,
        auth: ThreadAuthenticator | None,
    ) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_read, zmq.POLLIN)
        keys_stamp = self._keys_stamp()
        keys_checked = time.monotonic()
        while not self._stopping.is_set():
            # Woken by a request, a reply ready (the pipe) or stop (the pipe): no timeout is
            # needed but the next look at the authorized keys, when there are keys.
            timeout = None
            if auth is not None:
                due = keys_checked + _KEYS_RECHECK - time.monotonic()
                timeout = max(math.ceil(due * 1000), 0)
            ready = dict(poller.poll(timeout))
            if self._wake_read in ready:
                self._drain_wake()
            self._send_replies(sock)
            if sock in ready:
                for _ in range(_DRAIN_BATCH):
                    try:
                        frames = sock.recv_multipart(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._accept(sock, executor, frames)
            if auth is not None and time.monotonic() - keys_checked >= _KEYS_RECHECK:
                keys_checked = time.monotonic()
                stamp = self._keys_stamp()
                if stamp != keys_stamp:
                    keys_stamp = stamp
                    assert self._curve is not None
                    auth.configure_curve(
                        domain=_ZAP_DOMAIN.decode(), location=str(self._curve.authorized_dir)
                    )
                    logger.info("reloaded authorized control keys")

    def _keys_stamp(self) -> tuple[int, int] | None:
        if self._curve is None:
            return None
        try:
            st = self._curve.authorized_dir.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ino

    def _accept(
        self, sock: zmq.Socket[bytes], executor: ThreadPoolExecutor, frames: list[bytes]
    ) -> None:
        envelope, body = _split(frames)
        if envelope is None:
            self.dropped += 1
            return
        if len(body) != 1:
            self._reply_now(
                sock,
                envelope,
                encode_error(
                    None,
                    ErrorCode.BAD_REQUEST,
                    f"expected one request frame after the envelope, got {len(body)}",
                ),
            )
            return
        raw = body[0]
        try:
            request = decode_request(raw)
        except DecodeFailure as exc:
            self._reply_now(sock, envelope, encode_error(exc.request_id, exc.code, exc.message))
            return
        if self._quick is not None:
            answer = self._quick(request)
            if answer is not None:
                self._reply_now(sock, envelope, encode_ok(request.id, answer[0]))
                return
        if self._pending >= self._max_pending:
            self._reply_now(
                sock,
                envelope,
                encode_error(
                    request.id,
                    ErrorCode.BUSY,
                    f"{self._pending} requests are waiting; try again shortly",
                ),
            )
            return
        self._pending += 1
        executor.submit(self._work, envelope, request)

    def _work(self, envelope: list[bytes], request: Request) -> None:
        """On a worker thread: carry out the request, queue its reply for the server thread."""
        try:
            reply = encode_ok(request.id, self._dispatch(request))
        except ControlError as exc:
            reply = encode_error(request.id, exc.code, exc.message)
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            logger.exception("control {}: cannot encode the result", request.verb)
            reply = encode_error(request.id, ErrorCode.INTERNAL, f"cannot encode the result: {exc}")
        except Exception as exc:  # noqa: BLE001 - one failing request must not stop the server
            logger.exception("control {} failed", request.verb)
            reply = encode_error(request.id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        self._replies.put((envelope, reply))
        self._wake()

    def _send_replies(self, sock: zmq.Socket[bytes]) -> None:
        while True:
            try:
                envelope, reply = self._replies.get_nowait()
            except queue.Empty:
                return
            self._pending -= 1
            self._reply_now(sock, envelope, reply)

    def _reply_now(self, sock: zmq.Socket[bytes], envelope: list[bytes], reply: bytes) -> None:
        try:
            # Never blocks: a reply to a client that is gone, or that does not read its replies
            # (its queue is full), is dropped.
            sock.send_multipart([*envelope, reply], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            self.dropped += 1
            return
        self.served += 1

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write, b"\0")

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_read, 4096):
                pass

    def _close_pipe(self) -> None:
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_read = self._wake_write = -1


def _split(frames: list[bytes]) -> tuple[list[bytes] | None, list[bytes]]:
    """A ROUTER message → (routing envelope to reply with, request frames).

    REQ clients send `[identity, b"", request]`; a DEALER may leave out the empty delimiter,
    then the reply goes back without one too. An absurd envelope gets no reply at all.
    """
    if not frames:
        return None, []
    try:
        delimiter = frames.index(b"", 1)
    except ValueError:
        return [frames[0]], frames[1:]
    if delimiter >= _MAX_ENVELOPE_FRAMES:
        return None, []
    return frames[: delimiter + 1], frames[delimiter + 1 :]
