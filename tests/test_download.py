"""Binary downloads (SPEC §8): choosing the URL, checksums, hostile archives, atomic install.

Archives are built by the tests with tarfile/zipfile; the "node" inside is a tiny shell script
that answers `version`, so the install's run-it check passes. Downloads go through file:// URLs
or a loopback HTTP server thread that can misbehave on purpose.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wemixvisor.home.layout import Home
from wemixvisor.messages import events as ev
from wemixvisor.plans.platforms import platform_key
from wemixvisor.plans.queue import Plan, plan_from_object
from wemixvisor.upgrade.download import (
    Checksum,
    DownloadError,
    download_binary,
    extract_binary,
    fetch,
    parse_checksum,
    pick_binary_url,
    resolve_binary_url,
    safe_member_path,
    source,
    split_checksum,
)

FAKE_NODE = b"#!/bin/sh\necho 'anvil Version: 9.9.9-test'\n"
SHA256_HEX = "ab" * 32
SHA512_HEX = "cd" * 64


# helpers


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def home(tmp_path: Path) -> Home:
    layout = Home(root=tmp_path / "home", name="anvil", data_dir=tmp_path / "home" / "data")
    layout.upgrades_dir.mkdir(parents=True)
    return layout


def plan_for(url: str, name: str = "v2") -> Plan:
    return Plan(name=name, height=100, info={"binaries": {"any": url}})


def file_url(path: Path, checksum: str | None) -> str:
    url = path.as_uri()
    return f"{url}?checksum={checksum}" if checksum else url


def leftovers(home: Home) -> list[str]:
    return sorted(entry.name for entry in home.upgrades_dir.iterdir())


class Recorder:
    """Collects what download_binary publishes."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def __call__(self, event: ev.Event) -> None:
        self.events.append(event)

    def topics(self) -> list[str]:
        return [event.topic for event in self.events]

    def of(self, kind: type[ev.Event]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


TarMember = tuple[tarfile.TarInfo, bytes | None]


def regular(name: str, data: bytes = FAKE_NODE, mode: int = 0o755) -> TarMember:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> TarMember:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def build_tar(path: Path, members: list[TarMember], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as archive:  # type: ignore[call-overload]
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def build_zip(
    path: Path, members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED
) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def install_from(home: Home, archive: Path, **kwargs: Any) -> Path:
    data = archive.read_bytes()
    url = file_url(archive, sha256_of(data))
    return download_binary(home, plan_for(url), must_have_checksum=True, backoff=0.01, **kwargs)


def assert_refused(home: Home, archive: Path, match: str, **kwargs: Any) -> None:
    recorder = Recorder()
    with pytest.raises(DownloadError, match=match):
        install_from(home, archive, publish=recorder, **kwargs)
    assert leftovers(home) == [], "a refused download left files under upgrades/"
    failed = recorder.of(ev.DownloadFailed)
    assert len(failed) == 1
    assert not failed[0].will_retry


class FileServer:
    """A loopback HTTP server thread serving blobs; a path can misbehave a given number of times.

    `faults[path]` is consumed one request at a time: `truncate` (half the body, then close),
    `reset` (part of the body, then a TCP reset), `500`, `404`, `redirect:<url>`, or `hold`
    (part of the body, then the rest once `release` is set: a slow transfer).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.requests: list[str] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        path = urllib.parse.urlsplit(request.path).path
        with self._lock:
            self.requests.append(request.path)
            pending = self.faults.get(path) or []
            fault = pending.pop(0) if pending else None
        body = self.files.get(path)
        if fault == "404" or body is None:
            request.send_error(404)
            return
        if fault == "500":
            request.send_error(500)
            return
        if fault is not None and fault.startswith("redirect:"):
            request.send_response(302)
            request.send_header("Location", fault.removeprefix("redirect:"))
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        request.send_response(200)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if fault == "truncate":
            request.wfile.write(body[: len(body) // 2])
            request.wfile.flush()
            request.close_connection = True
            return
        if fault == "hold":
            request.wfile.write(body[:1024])
            request.wfile.flush()
            self.release.wait(60)
            request.wfile.write(body[1024:])
            return
        if fault == "reset":
            request.wfile.write(body[: len(body) // 3])
            request.wfile.flush()
            # SO_LINGER with a zero timeout turns close() into a reset.
            request.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            request.close_connection = True
            return
        request.wfile.write(body)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server() -> Iterator[FileServer]:
    served = FileServer()
    try:
        yield served
    finally:
        served.close()


# checksums


def test_checksums_are_parsed_for_sha256_and_sha512_in_either_case() -> None:
    assert parse_checksum(f"sha256:{SHA256_HEX}") == Checksum("sha256", SHA256_HEX)
    assert parse_checksum(f"sha512:{SHA512_HEX}") == Checksum("sha512", SHA512_HEX)
    assert parse_checksum(f"SHA256:{SHA256_HEX.upper()}") == Checksum("sha256", SHA256_HEX)
    assert str(parse_checksum(f"sha256:{SHA256_HEX}")) == f"sha256:{SHA256_HEX}"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (SHA256_HEX, "of the form"),
        (f"md5:{'ab' * 16}", "of the form"),
        ("sha256:", "not hexadecimal"),
        (f"sha256:{'zz' * 32}", "not hexadecimal"),
        (f"sha256:{SHA256_HEX}ab", "64 hex digits, not 66"),
        (f"sha512:{SHA256_HEX}", "128 hex digits, not 64"),
    ],
)
def test_bad_checksums_are_refused_with_the_reason(text: str, match: str) -> None:
    with pytest.raises(DownloadError, match=match):
        parse_checksum(text)


def test_the_checksum_parameter_is_split_off_the_url() -> None:
    plain = "https://host/gwemix.tar.gz"
    assert split_checksum(plain) == (plain, None)
    url, checksum = split_checksum(f"{plain}?checksum=sha256:{SHA256_HEX}")
    assert url == plain
    assert checksum == Checksum("sha256", SHA256_HEX)
    # With other parameters (signed URLs) the URL is fetched exactly as given.
    signed = f"{plain}?X-Sig=abc&checksum=sha256:{SHA256_HEX}"
    assert split_checksum(signed) == (signed, Checksum("sha256", SHA256_HEX))
    with pytest.raises(DownloadError, match="more than one checksum"):
        split_checksum(f"{plain}?checksum=sha256:{SHA256_HEX}&checksum=sha256:{SHA256_HEX}")
    with pytest.raises(DownloadError, match="not hexadecimal"):
        split_checksum(f"{plain}?checksum=sha256:nothex")


# choosing the URL


@pytest.mark.parametrize(
    ("system", "machine", "key"),
    [
        ("Linux", "x86_64", "linux/amd64"),
        ("Linux", "aarch64", "linux/arm64"),
        ("Darwin", "arm64", "darwin/arm64"),
        ("Linux", "i686", "linux/386"),
        ("Linux", "riscv64", "linux/riscv64"),
    ],
)
def test_platform_keys_use_go_names(system: str, machine: str, key: str) -> None:
    assert platform_key(system, machine) == key


def test_the_platform_entry_wins_over_any() -> None:
    info = {"binaries": {"linux/amd64": "https://a/x", "any": "https://b/y"}}
    assert pick_binary_url(info, "linux/amd64") == "https://a/x"
    assert pick_binary_url(info, "darwin/arm64") == "https://b/y"
    with pytest.raises(DownloadError, match=r"no entry for darwin/arm64 or any \(has: linux/amd64"):
        pick_binary_url({"binaries": {"linux/amd64": "https://a/x"}}, "darwin/arm64")
    with pytest.raises(DownloadError, match="no binaries"):
        pick_binary_url({"time": "x"}, "linux/amd64")


def test_info_given_as_a_json_string_or_an_url_yields_the_binary_url(
    tmp_path: Path, server: FileServer
) -> None:
    binaries = {"binaries": {"linux/amd64": "https://host/a.zip", "any": "https://host/b.zip"}}
    as_string = plan_from_object(
        {"name": "v2", "height": 10, "info": '{"binaries": {"any": "file:///opt/x"}}'}, "file"
    )
    assert resolve_binary_url(as_string, "anvil") == "file:///opt/x"

    info_file = tmp_path / "info.json"
    info_file.write_text(msgspec.json.encode(binaries).decode())
    by_file = plan_from_object({"name": "v2", "height": 10, "info": info_file.as_uri()}, "file")
    assert by_file.info_url is not None
    assert resolve_binary_url(by_file, "anvil", platform="linux/amd64") == "https://host/a.zip"
    assert resolve_binary_url(by_file, "anvil", platform="darwin/arm64") == "https://host/b.zip"

    server.files["/info.json"] = info_file.read_bytes()
    server.faults["/info.json"] = ["500"]
    by_http = plan_from_object(
        {"name": "v2", "height": 10, "info": server.url("/info.json")}, "file"
    )
    assert resolve_binary_url(by_http, "anvil", platform="linux/amd64", backoff=0.01) == (
        "https://host/a.zip"
    )
    assert len(server.requests) == 2

    server.files["/list.json"] = b"[1, 2]"
    not_object = plan_from_object(
        {"name": "v2", "height": 10, "info": server.url("/list.json")}, "file"
    )
    with pytest.raises(DownloadError, match="not a JSON object"):
        resolve_binary_url(not_object, "anvil")


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://host/anvil", "only http://, https:// and file://"),
        ("data:,hello", "only http://, https:// and file://"),
        ("/opt/anvil", "only http://, https:// and file://"),
        ("file://otherhost/opt/anvil", "must name a local path"),
        ("http:///anvil", "has no host"),
    ],
)
def test_other_schemes_and_remote_file_urls_are_refused(url: str, match: str) -> None:
    with pytest.raises(DownloadError, match=match):
        resolve_binary_url(plan_for(url), "anvil")


def test_a_plan_without_info_names_no_binary() -> None:
    with pytest.raises(DownloadError, match="has no info"):
        resolve_binary_url(Plan(name="v2", height=5), "anvil")


# member names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bin/anvil", "bin/anvil"),
        ("./bin//anvil", "bin/anvil"),
        ("./", "."),
        ("package/bin/anvil", "package/bin/anvil"),
        ("dir/", "dir"),
    ],
)
def test_safe_member_names_are_normalised(name: str, expected: str) -> None:
    assert safe_member_path(name) == PurePosixPath(expected)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("/etc/passwd", "absolute path"),
        ("../anvil", r"'\.\.' component"),
        ("bin/../../anvil", r"'\.\.' component"),
        ("bin\\..\\anvil", "backslash"),
        ("bin/an\0vil", "NUL"),
        ("", "empty name"),
    ],
)
def test_unsafe_member_names_are_refused(name: str, match: str) -> None:
    with pytest.raises(DownloadError, match=match):
        safe_member_path(name)


_NAME_PARTS = st.sampled_from(["..", ".", "", "bin", "anvil", "a b", "é", "\\", "\0", "~", "//"])


@given(
    st.one_of(
        st.text(max_size=40),
        st.lists(_NAME_PARTS, max_size=8).map("/".join),
        st.lists(_NAME_PARTS, min_size=1, max_size=8).map(lambda parts: "/" + "/".join(parts)),
    )
)
def test_any_member_name_is_either_refused_or_a_path_inside_the_tree(name: str) -> None:
    try:
        path = safe_member_path(name)
    except DownloadError:
        return
    assert not path.is_absolute()
    assert ".." not in path.parts
    root = "/srv/unpack"
    joined = os.path.normpath(os.path.join(root, str(path)))
    assert joined == root or joined.startswith(root + "/")


# archives: where the binary is found


@pytest.mark.parametrize(
    ("members", "expected_data"),
    [
        # npm's layout: found as the only regular file named anvil.
        ([regular("package/package.json", b"{}"), regular("package/bin/anvil")], FAKE_NODE),
        ([regular("anvil")], FAKE_NODE),
        ([regular("./bin/anvil")], FAKE_NODE),
        # bin/anvil is preferred to anvil at the top and to anvil anywhere else.
        (
            [
                regular("anvil", FAKE_NODE + b"#top\n"),
                regular("other/anvil", FAKE_NODE + b"#other\n"),
                regular("bin/anvil", FAKE_NODE + b"#bin\n"),
            ],
            FAKE_NODE + b"#bin\n",
        ),
        (
            [regular("x/anvil", FAKE_NODE + b"#x\n"), regular("anvil", FAKE_NODE + b"#top\n")],
            FAKE_NODE + b"#top\n",
        ),
    ],
)
def test_the_binary_is_found_in_a_tarball(
    home: Home, tmp_path: Path, members: list[TarMember], expected_data: bytes
) -> None:
    archive = build_tar(tmp_path / "node.tar.gz", members)
    installed = install_from(home, archive)
    assert installed == home.upgrade_bin("v2")
    assert installed.read_bytes() == expected_data
    assert installed.stat().st_mode & 0o777 == 0o755
    assert leftovers(home) == ["v2"]
    assert sorted(p.name for p in home.upgrade_dir("v2").rglob("*")) == [
        "anvil",
        "bin",
        "download.json",
    ]


@pytest.mark.parametrize("mode", ["w", "w:bz2", "w:xz"])
def test_plain_and_other_compressed_tarballs_work(home: Home, tmp_path: Path, mode: str) -> None:
    archive = build_tar(tmp_path / "node.tar", [regular("bin/anvil")], mode=mode)
    assert install_from(home, archive).read_bytes() == FAKE_NODE


def test_a_zip_holding_bin_anvil_installs_it(home: Home, tmp_path: Path) -> None:
    archive = build_zip(tmp_path / "node.zip", {"README": b"hi", "bin/anvil": FAKE_NODE})
    assert install_from(home, archive).read_bytes() == FAKE_NODE


def test_a_bare_binary_is_installed_as_is_and_sha512_is_checked(home: Home, tmp_path: Path) -> None:
    bare = tmp_path / "anvil-linux-amd64"
    bare.write_bytes(FAKE_NODE)
    checksum = "sha512:" + hashlib.sha512(FAKE_NODE).hexdigest()
    recorder = Recorder()
    seen: list[tuple[int, int | None]] = []
    installed = download_binary(
        home,
        plan_for(file_url(bare, checksum)),
        must_have_checksum=True,
        publish=recorder,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert installed.read_bytes() == FAKE_NODE
    assert os.access(installed, os.X_OK)
    assert recorder.topics()[0] == "download.started"
    assert recorder.topics()[-1] == "download.completed"
    completed = recorder.of(ev.DownloadCompleted)[0]
    assert completed.sha256 == hashlib.sha256(FAKE_NODE).hexdigest()
    assert completed.bytes == len(FAKE_NODE)
    assert seen[-1] == (len(FAKE_NODE), len(FAKE_NODE))
    assert recorder.of(ev.DownloadProgress)[-1].bytes_done == len(FAKE_NODE)


# archives: refused


CHR = tarfile.CHRTYPE
SYM = tarfile.SYMTYPE
LNK = tarfile.LNKTYPE


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ([regular("../anvil")], r"'\.\.' component"),
        ([regular("bin/../../anvil")], r"'\.\.' component"),
        ([regular("/usr/local/bin/anvil")], "absolute path"),
        ([special("bin", SYM, "/etc"), regular("bin/anvil")], "points at an absolute path"),
        ([special("evil", SYM, "../../etc")], "points outside the archive"),
        ([regular("bin/anvil"), special("passwd", LNK, "../../etc/passwd")], "hard link"),
        ([regular("bin/anvil"), special("passwd", LNK, "/etc/passwd")], "absolute path"),
        ([regular("bin/anvil"), special("dev/null", CHR)], "device file"),
        ([regular("bin/anvil"), special("dev/sda", tarfile.BLKTYPE)], "device file"),
        ([regular("bin/anvil"), special("pipe", tarfile.FIFOTYPE)], "fifo"),
        ([regular("a/anvil"), regular("b/anvil")], "more than one file named 'anvil'"),
        ([regular("bin/anvil"), regular("bin/anvil")], "bin/anvil appears 2 times"),
        ([regular("bin/anvil.sh")], "no regular file named 'anvil'"),
        ([special("bin/anvil", SYM, "../lib/anvil"), regular("lib/anvil")], "not a regular"),
    ],
)
def test_hostile_tarballs_are_refused_and_leave_nothing(
    home: Home, tmp_path: Path, members: list[TarMember], match: str
) -> None:
    archive = build_tar(tmp_path / "node.tar.gz", members)
    assert_refused(home, archive, match)


def test_links_that_stay_inside_the_tree_are_tolerated_but_not_created(
    home: Home, tmp_path: Path
) -> None:
    archive = build_tar(
        tmp_path / "node.tar.gz",
        [
            regular("bin/anvil"),
            special("lib/libx.so", SYM, "libx.so.1"),
            special("bin/node", SYM, "../bin/anvil"),
            special("bin/copy", LNK, "bin/anvil"),
        ],
    )
    install_from(home, archive)
    assert sorted(p.name for p in home.upgrade_dir("v2").rglob("*")) == [
        "anvil",
        "bin",
        "download.json",
    ]


def test_a_tarball_bomb_is_refused_by_its_declared_size(home: Home, tmp_path: Path) -> None:
    zeros = b"\0" * (2 << 20)
    archive = build_tar(tmp_path / "node.tar.gz", [regular("bin/anvil"), regular("pad", zeros)])
    assert archive.stat().st_size < 64 << 10
    assert_refused(
        home, archive, "unpacks to more than the 1048576-byte limit", max_unpacked=1 << 20
    )


def test_too_many_entries_are_refused(home: Home, tmp_path: Path) -> None:
    members = [regular("bin/anvil"), *(regular(f"f{i}", b"") for i in range(20))]
    archive = build_tar(tmp_path / "node.tar.gz", members)
    assert_refused(home, archive, "more than 10 entries", max_entries=10)


def test_a_zip_bomb_is_refused(home: Home, tmp_path: Path) -> None:
    archive = build_zip(
        tmp_path / "node.zip", {"bin/anvil": FAKE_NODE, "zeros": b"\0" * (16 << 20)}
    )
    assert archive.stat().st_size < 64 << 10
    assert_refused(home, archive, "unpacks to more than", max_unpacked=1 << 20)


def test_a_zip_member_larger_than_declared_is_refused(home: Home, tmp_path: Path) -> None:
    # Store the binary uncompressed, then make both headers declare 10 bytes fewer.
    archive = build_zip(tmp_path / "node.zip", {"bin/anvil": FAKE_NODE}, compression=0)
    raw = bytearray(archive.read_bytes())
    size = struct.pack("<I", len(FAKE_NODE))
    smaller = struct.pack("<I", len(FAKE_NODE) - 10)
    assert raw.count(size) >= 2
    archive.write_bytes(bytes(raw).replace(size, smaller))
    assert_refused(home, archive, "damaged zip archive|more bytes than it declares")


def zip_with_unix_entry(path: Path, name: str, mode: int, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("bin/anvil", FAKE_NODE)
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = mode << 16
        archive.writestr(info, data)
    return path


@pytest.mark.parametrize(
    ("name", "mode", "data", "match"),
    [
        ("etc", 0o120777, b"/etc", "points at an absolute path"),
        ("up", 0o120777, b"../../..", "points outside the archive"),
        ("tty", 0o020666, b"", "device, fifo or socket"),
        ("../anvil", 0o100755, FAKE_NODE, r"'\.\.' component"),
        ("/abs/anvil", 0o100755, FAKE_NODE, "absolute path"),
    ],
)
def test_hostile_zips_are_refused(
    home: Home, tmp_path: Path, name: str, mode: int, data: bytes, match: str
) -> None:
    archive = zip_with_unix_entry(tmp_path / "node.zip", name, mode, data)
    assert_refused(home, archive, match)


def test_a_file_named_like_an_archive_that_is_none_is_refused(home: Home, tmp_path: Path) -> None:
    fake = tmp_path / "node.tar.gz"
    fake.write_bytes(b"<html>not found</html>")
    assert_refused(home, fake, "named like an archive but is not one")


def test_a_damaged_tarball_is_refused(home: Home, tmp_path: Path) -> None:
    archive = build_tar(tmp_path / "node.tar.gz", [regular("bin/anvil", FAKE_NODE * 1000)])
    archive.write_bytes(archive.read_bytes()[:-200])
    assert_refused(home, archive, "tar archive")


def test_extract_binary_alone_writes_only_the_binary(tmp_path: Path) -> None:
    archive = build_tar(tmp_path / "a.tgz", [regular("package/bin/anvil"), regular("x", b"1")])
    dest = tmp_path / "out" / "anvil"
    dest.parent.mkdir()
    extract_binary(archive, "anvil", dest, source="a.tgz")
    assert dest.read_bytes() == FAKE_NODE
    assert [p.name for p in dest.parent.iterdir()] == ["anvil"]


# checksums and install rules


def test_a_checksum_mismatch_installs_nothing_and_is_not_retried(
    home: Home, tmp_path: Path
) -> None:
    bare = tmp_path / "anvil"
    bare.write_bytes(FAKE_NODE)
    recorder = Recorder()
    with pytest.raises(DownloadError, match=f"checksum mismatch .* expected sha256:{SHA256_HEX}"):
        download_binary(
            home,
            plan_for(file_url(bare, f"sha256:{SHA256_HEX}")),
            must_have_checksum=True,
            publish=recorder,
        )
    assert leftovers(home) == []
    assert recorder.topics() == ["download.started", "download.progress", "download.failed"]
    assert recorder.of(ev.DownloadFailed)[0].attempt == 1


def test_an_url_without_checksum_is_refused_before_fetching_unless_allowed(
    home: Home, tmp_path: Path, server: FileServer
) -> None:
    server.files["/anvil"] = FAKE_NODE
    recorder = Recorder()
    with pytest.raises(DownloadError, match=r"has no \?checksum=.*refusing"):
        download_binary(
            home, plan_for(server.url("/anvil")), must_have_checksum=True, publish=recorder
        )
    assert server.requests == []
    assert recorder.topics() == ["download.failed"]
    assert recorder.of(ev.DownloadFailed)[0].attempt == 0
    assert leftovers(home) == []

    installed = download_binary(home, plan_for(server.url("/anvil")), must_have_checksum=False)
    assert installed.read_bytes() == FAKE_NODE


def test_a_binary_that_does_not_run_here_is_not_installed(home: Home, tmp_path: Path) -> None:
    # An ELF header for another machine would do the same; junk bytes fail exec() alike.
    bare = tmp_path / "anvil"
    bare.write_bytes(b"\x7fELF" + b"\x00" * 60)
    with pytest.raises(DownloadError, match="does not run here"):
        download_binary(
            home, plan_for(file_url(bare, sha256_of(bare.read_bytes()))), must_have_checksum=True
        )
    assert leftovers(home) == []


def test_an_installed_binary_is_never_replaced(home: Home, tmp_path: Path) -> None:
    existing = home.upgrade_bin("v2")
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"#!/bin/sh\necho old\n")
    bare = tmp_path / "anvil"
    bare.write_bytes(FAKE_NODE)
    with pytest.raises(DownloadError, match="already exists"):
        download_binary(
            home, plan_for(file_url(bare, sha256_of(FAKE_NODE))), must_have_checksum=True
        )
    assert existing.read_bytes() == b"#!/bin/sh\necho old\n"
    assert leftovers(home) == ["v2"]


def test_an_upgrade_dir_without_its_binary_receives_it(home: Home, tmp_path: Path) -> None:
    upgrade_dir = home.upgrade_dir("v2")
    upgrade_dir.mkdir()
    (upgrade_dir / "upgrade-info.json").write_text("{}")
    bare = tmp_path / "anvil"
    bare.write_bytes(FAKE_NODE)
    installed = download_binary(
        home, plan_for(file_url(bare, sha256_of(FAKE_NODE))), must_have_checksum=True
    )
    assert installed.read_bytes() == FAKE_NODE
    assert (upgrade_dir / "upgrade-info.json").read_text() == "{}"


def test_leftovers_of_a_killed_download_are_swept(home: Home, tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(dead.stdout)
    stale = home.upgrades_dir / f".v2.download-{dead_pid}-abc123"
    (stale / "bin").mkdir(parents=True)
    (stale / "download").write_bytes(b"partial")
    other_plan = home.upgrades_dir / f".v3.download-{dead_pid}-abc123"
    other_plan.mkdir()
    running = home.upgrades_dir / f".v3.download-{os.getpid()}-def456"
    running.mkdir()
    bare = tmp_path / "anvil"
    bare.write_bytes(FAKE_NODE)
    download_binary(home, plan_for(file_url(bare, sha256_of(FAKE_NODE))), must_have_checksum=True)
    # Another plan's download in this very process may still be running: it is left alone.
    assert leftovers(home) == [running.name, "v2"]


# transfers over HTTP


@pytest.mark.parametrize("fault", ["truncate", "reset", "500"])
def test_a_broken_transfer_is_retried_and_then_succeeds(
    home: Home, server: FileServer, fault: str
) -> None:
    body = FAKE_NODE + b"#" * 200_000 + b"\n"
    server.files["/anvil"] = body
    server.faults["/anvil"] = [fault]
    recorder = Recorder()
    url = server.url("/anvil") + f"?checksum={sha256_of(body)}"
    installed = download_binary(
        home, plan_for(url), must_have_checksum=True, publish=recorder, backoff=0.01
    )
    assert installed.read_bytes() == body
    assert len(server.requests) == 2
    assert server.requests[0] == "/anvil", "the checksum parameter is not sent to the server"
    retried = recorder.of(ev.DownloadFailed)
    assert [(e.attempt, e.will_retry) for e in retried] == [(1, True)]
    assert recorder.topics()[-1] == "download.completed"


def test_persistent_failures_give_up_after_the_attempts(home: Home, server: FileServer) -> None:
    server.files["/anvil"] = FAKE_NODE
    server.faults["/anvil"] = ["500", "500", "500"]
    recorder = Recorder()
    url = server.url("/anvil") + f"?checksum={sha256_of(FAKE_NODE)}"
    with pytest.raises(DownloadError, match=r"HTTP 500.*gave up after 3 attempts"):
        download_binary(
            home, plan_for(url), must_have_checksum=True, publish=recorder, backoff=0.01
        )
    failed = recorder.of(ev.DownloadFailed)
    assert [(e.attempt, e.will_retry) for e in failed] == [(1, True), (2, True), (3, False)]
    assert leftovers(home) == []


def test_client_errors_are_not_retried(home: Home, server: FileServer) -> None:
    url = server.url("/missing") + f"?checksum=sha256:{SHA256_HEX}"
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_binary(home, plan_for(url), must_have_checksum=True, backoff=0.01)
    assert len(server.requests) == 1


def test_a_download_over_the_size_limit_is_refused_unread(home: Home, server: FileServer) -> None:
    server.files["/anvil"] = b"x" * 5000
    url = server.url("/anvil") + f"?checksum=sha256:{SHA256_HEX}"
    with pytest.raises(DownloadError, match="5000 bytes, over the 4096-byte limit"):
        download_binary(home, plan_for(url), must_have_checksum=True, max_bytes=4096)
    assert leftovers(home) == []


def test_a_redirect_to_a_local_file_is_refused(home: Home, server: FileServer) -> None:
    server.files["/anvil"] = FAKE_NODE
    server.faults["/anvil"] = ["redirect:file:///etc/passwd"]
    url = server.url("/anvil") + f"?checksum={sha256_of(FAKE_NODE)}"
    with pytest.raises(DownloadError, match=r"HTTP 302.*file:///etc/passwd.* not allowed"):
        download_binary(home, plan_for(url), must_have_checksum=True, backoff=0.01)
    assert leftovers(home) == []


def test_redirects_are_followed_but_never_down_to_plain_http(
    home: Home, server: FileServer
) -> None:
    server.files["/old"] = b""
    server.files["/anvil"] = FAKE_NODE
    server.faults["/old"] = ["redirect:" + server.url("/anvil")]
    url = server.url("/old") + f"?checksum={sha256_of(FAKE_NODE)}"
    assert download_binary(home, plan_for(url), must_have_checksum=True).read_bytes() == FAKE_NODE

    handler = fetch._NoDowngradeRedirects()
    request = urllib.request.Request("https://host/anvil")
    with pytest.raises(DownloadError, match="refused redirect from https:// to http://"):
        handler.redirect_request(request, io.BytesIO(), 302, "Found", {}, "http://host/anvil")


def test_concurrent_downloads_of_one_plan_install_once(home: Home, server: FileServer) -> None:
    server.files["/anvil"] = FAKE_NODE
    url = server.url("/anvil") + f"?checksum={sha256_of(FAKE_NODE)}"
    results: list[str] = []

    def run() -> None:
        try:
            download_binary(home, plan_for(url), must_have_checksum=True)
            results.append("installed")
        except DownloadError as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results.count("installed") == 1
    assert all("already exists" in r for r in results if r != "installed")
    assert leftovers(home) == ["v2"]


def test_passwords_in_urls_are_not_shown() -> None:
    shown = source.shown_url("https://user:secret@host:8443/a?checksum=x")
    assert "secret" not in shown
    assert shown.startswith("https://***@host:8443/a")


def test_progress_is_rate_limited() -> None:
    calls: list[tuple[int, int | None]] = []
    tracker = fetch.ProgressThrottle(lambda done, total: calls.append((done, total)), interval=3600)
    tracker.total = 10
    for done in range(1, 11):
        tracker.update(done)
    tracker.update(10, final=True)
    assert calls == [(1, 10), (10, 10)]
