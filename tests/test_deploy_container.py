"""The container image and the Kubernetes manifests in deploy/: the Containerfile passes hadolint
and keeps node binaries out of the image; the manifests validate against Kubernetes' OpenAPI
schemas (shipped with kubernetes-validate, offline); and what they run — the init container's
script, the container's environment, the probes and the HEALTHCHECK — is run here for real
against a daemon supervising anvil."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from devtools.anvil import free_port
from tests.control_harness import short_root
from tests.daemon_harness import Daemon
from wemixvisor.config.values import parse_duration

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
CONTAINERFILE = DEPLOY / "Containerfile"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
BIN = Path(sys.executable).parent
# The oldest and the newest Kubernetes whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version())
STOP_MARGIN = 30.0  # the daemon's own shutdown after the node's grace


def instructions() -> list[tuple[str, str]]:
    """The Containerfile as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text())
    parsed = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            parsed.append((keyword.upper(), rest.strip()))
    return parsed


def only(keyword: str) -> str:
    found = [rest for key, rest in instructions() if key == keyword]
    assert len(found) == 1, f"{keyword}: {found}"
    return found[0]


def runs() -> str:
    return " ".join(" ".join(rest.split()) for key, rest in instructions() if key == "RUN")


def documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(kind: str) -> dict[str, Any]:
    found = [doc for doc in documents() if doc["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = of_kind("StatefulSet")["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    spec = pod_spec()
    found = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in spec["env"]}


# Containerfile


def test_the_containerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_careless_containerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Containerfile"
    careless.write_text("FROM python:latest\nRUN apt-get install curl\nCMD wemixvisor run\n")
    result = subprocess.run(
        [str(BIN / "hadolint"), str(careless)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the :latest tag


def test_the_image_runs_wemixvisor_as_a_user_with_the_home_on_a_volume() -> None:
    base = only("FROM")
    assert re.fullmatch(r"python:3\.1[1-9]-slim-\w+", base), base
    env = dict(shlex.split(pair)[0].split("=", 1) for pair in shlex.split(only("ENV")))
    home = env["DAEMON_HOME"]
    assert re.fullmatch(r"\[\"?" + re.escape(home) + r"\"?\]", only("VOLUME"))
    user = only("USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), "numeric, so runAsNonRoot can check it"
    assert int(uid) != 0
    assert f"--uid {uid}" in runs()
    assert f"--home-dir {home}" in runs()
    assert only("HEALTHCHECK").split(" CMD ")[1].startswith('["wemixvisor", "status"')
    assert only("ENTRYPOINT") == '["wemixvisor"]'
    assert only("CMD") == '["run"]'


def test_no_node_binary_is_baked_into_the_image() -> None:
    copied = [rest for key, rest in instructions() if key in {"COPY", "ADD"}]
    sources = [source for rest in copied for source in shlex.split(rest)[:-1]]
    assert sources == ["pyproject.toml", "README.md", "wemixvisor"]
    assert not [rest for key, rest in instructions() if key == "ADD"]
    assert not re.search(r"gwemix|anvil|curl|wget", runs())


# Kubernetes manifests


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_the_manifests_validate_against_the_kubernetes_schema(path: Path, version: str) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, version, strict=True)


def test_the_schema_check_catches_a_misspelt_field() -> None:
    statefulset = of_kind("StatefulSet")
    statefulset["spec"]["template"]["spec"]["terminationGracePeriod"] = 90
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSIONS[-1], strict=True)


def test_one_node_is_a_statefulset_with_its_own_volume_and_service() -> None:
    statefulset, service = of_kind("StatefulSet"), of_kind("Service")
    assert statefulset["spec"]["replicas"] == 1
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    claims = [t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]]
    daemon = container("wemixvisor")
    home = env_of(daemon)["DAEMON_HOME"]
    assert {m["name"]: m["mountPath"] for m in daemon["volumeMounts"]}[claims[0]] == home
    assert not [v for v in pod_spec().get("volumes", []) if "hostPath" in v]
    named = {p["name"]: p["containerPort"] for c in pod_spec()["containers"] for p in c["ports"]}
    for port in service["spec"]["ports"]:
        assert named[port["targetPort"]] == port["port"]
    env = env_of(daemon)
    assert env["WEMIXVISOR_METRICS_ADDRESS"].endswith(f":{named['metrics']}")
    assert env["WEMIXVISOR_CONTROL_ENDPOINT"].endswith(f":{named['control']}")


def test_the_console_serves_tls_beside_the_daemon_on_the_same_home() -> None:
    console = container("console")
    args = console["args"]
    assert args[0] == "web"
    listen = args[args.index("--listen") + 1]
    assert not listen.startswith("127."), "reachable from the Service"
    cert, key = args[args.index("--tls-cert") + 1], args[args.index("--tls-key") + 1]
    mounts = {m["name"]: m for m in console["volumeMounts"]}
    tls = mounts["console-tls"]
    assert tls["readOnly"] is True
    assert cert.startswith(tls["mountPath"]) and key.startswith(tls["mountPath"])
    home = env_of(container("wemixvisor"))["DAEMON_HOME"]
    assert mounts["home"]["mountPath"] == home, "the token, the keys and the events socket"
    assert env_of(console) == env_of(container("wemixvisor"))
    assert console["securityContext"]["allowPrivilegeEscalation"] is False
    secret = {v["name"]: v for v in pod_spec()["volumes"]}["console-tls"]["secret"]
    assert secret["secretName"]
    ports = {p["name"]: p["port"] for p in of_kind("Service")["spec"]["ports"]}
    assert ports["console"] == int(listen.rsplit(":", 1)[1])


def test_the_pod_runs_unprivileged_as_the_images_user() -> None:
    security = pod_spec()["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == only("USER").split(":")[0]
    for name in ("home", "wemixvisor"):
        assert container(name)["securityContext"]["allowPrivilegeEscalation"] is False
        assert container(name)["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert env_of(container(name)) == env_of(container("wemixvisor"))


def test_kubernetes_waits_for_the_daemon_to_stop_its_node() -> None:
    grace = parse_duration(env_of(container("wemixvisor"))["DAEMON_SHUTDOWN_GRACE"])
    assert pod_spec()["terminationGracePeriodSeconds"] >= grace + STOP_MARGIN


def test_liveness_asks_the_daemon_and_readiness_asks_for_a_running_node() -> None:
    daemon = container("wemixvisor")
    assert daemon["readinessProbe"]["exec"]["command"][:2] == ["wemixvisor", "status"]
    liveness = daemon["livenessProbe"]["httpGet"]
    assert (liveness["path"], liveness["port"]) == ("/metrics", "metrics")
    readiness = daemon["readinessProbe"]
    assert readiness["timeoutSeconds"] > float(readiness["exec"]["command"][-1])


# What the manifests and the image run, run here


@pytest.fixture(scope="module")
def pod(anvil_bin_1_5_1: Path) -> Iterator[tuple[dict[str, str], Daemon, Path]]:
    """The pod's first start on this machine: the init container's script on an empty home
    (the genesis binary uploaded as the manifest says), then the daemon with the container's
    environment (ports moved to free ones, anvil in place of gwemix)."""
    with short_root() as root:
        home = root / "home"
        home.mkdir()
        metrics_port, control_port, rpc_port = free_port(), free_port(), free_port()
        env = {
            **os.environ,
            **env_of(container("wemixvisor")),
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "DAEMON_HOME": str(home),
            "DAEMON_RPC_ADDRESS": f"http://127.0.0.1:{rpc_port}",
            "WEMIXVISOR_HEARTBEAT_INTERVAL": "200ms",
        }
        env["WEMIXVISOR_METRICS_ADDRESS"] = re.sub(
            r":\d+$", f":{metrics_port}", env["WEMIXVISOR_METRICS_ADDRESS"]
        )
        env["WEMIXVISOR_CONTROL_ENDPOINT"] = re.sub(
            r":\d+$", f":{control_port}", env["WEMIXVISOR_CONTROL_ENDPOINT"]
        )
        run_init_container(env, home, anvil_bin_1_5_1)
        args = ["--port", str(rpc_port), "--block-time", "1"]
        daemon = Daemon(home, {k: v for k, v in env.items() if k != "DAEMON_HOME"}, args)
        daemon.start()
        try:
            yield env, daemon, home
        finally:
            try:
                assert daemon.terminate() == 0
            finally:
                daemon.kill()


def run_init_container(env: dict[str, str], home: Path, binary: Path) -> None:
    script = container("home")["command"]
    init = subprocess.Popen(script, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert init.stdout is not None
        waiting = init.stdout.readline().decode()
        assert "waiting for the genesis binary" in waiting, waiting
        part = home / "genesis-upload.part"
        part.write_bytes(binary.read_bytes())  # kubectl cp …part, then mv, as documented
        part.rename(home / "genesis-upload")
        output = init.stdout.read().decode()
        assert init.wait(timeout=60) == 0, output
    finally:
        init.kill()
        init.wait()
        if init.stdout is not None:
            init.stdout.close()
    assert os.readlink(home / "wemixvisor" / "current") == "genesis"
    assert (home / "wemixvisor" / "keys" / "server.key").exists()
    assert not (home / "genesis-upload").exists()
    again = subprocess.run(script, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout == "", "an initialised home is left as it is"


def probe(env: dict[str, str], command: list[str]) -> int:
    return subprocess.run(command, env=env, capture_output=True, timeout=30, check=False).returncode


def healthcheck_command() -> list[str]:
    command: list[str] = yaml.safe_load(only("HEALTHCHECK").split(" CMD ")[1])
    return command


def wait_probe(env: dict[str, str], command: list[str], code: int) -> None:
    deadline = time.monotonic() + 60
    while (last := probe(env, command)) != code:
        assert time.monotonic() < deadline, f"{command} exits {last}, never {code}"


def test_the_probes_and_the_healthcheck_follow_the_node(
    pod: tuple[dict[str, str], Daemon, Path],
) -> None:
    env, _daemon, _home = pod
    readiness = container("wemixvisor")["readinessProbe"]["exec"]["command"]
    wait_probe(env, readiness, 0)  # over tcp with the CURVE keys the init container made
    assert probe(env, healthcheck_command()) == 0
    metrics = env["WEMIXVISOR_METRICS_ADDRESS"].rsplit(":", 1)[1]
    liveness = container("wemixvisor")["livenessProbe"]["httpGet"]["path"]
    url = f"http://127.0.0.1:{metrics}{liveness}"

    assert probe(env, ["wemixvisor", "stop"]) == 0
    wait_probe(env, readiness, 1)  # not ready while the node is down …
    assert probe(env, healthcheck_command()) != 0
    with urllib.request.urlopen(url, timeout=5) as response:  # … but alive: no restart
        assert response.status == 200
        assert b"wemixvisor_node_up 0.0" in response.read()
    assert probe(env, ["wemixvisor", "start"]) == 0
    wait_probe(env, readiness, 0)


def test_the_control_endpoint_refuses_a_client_without_the_keys(
    pod: tuple[dict[str, str], Daemon, Path], tmp_path: Path
) -> None:
    env, _daemon, _home = pod
    stranger = {**env, "DAEMON_HOME": str(tmp_path)}
    result = subprocess.run(
        ["wemixvisor", "status", "--timeout", "2"],
        env=stranger,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 3, result.stdout + result.stderr
