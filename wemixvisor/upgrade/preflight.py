"""Preflight checks of a plan (SPEC §5): everything that can be known hours before H.

`quick` checks are a few stat calls, cheap enough to repeat at H itself right before the node
is stopped: the node is never stopped for an upgrade that cannot start. What costs more (the
binary's version, the data dir's size for the space check) is done by the early checks and
taken from their last result. Downloading a missing binary (`fetch_missing_binary`) belongs to
the early checks only; `check_plan` never downloads. `preflight_plans` checks many plans in one
go: the data dir is measured once for all of them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from loguru import logger

from wemixvisor.backup.store import (
    BackupError,
    DataUsage,
    Free,
    free_space,
    upgrade_space_problem,
)
from wemixvisor.chain.client import ChainClient
from wemixvisor.chain.rpc import RpcError
from wemixvisor.chain.wbft import WbftClient, assess_quorum, istanbul_problem
from wemixvisor.config import Config
from wemixvisor.home.layout import Home, LayoutError, check_binary
from wemixvisor.messages.events import Event, ValidatorQuorumAtRisk
from wemixvisor.node.args import NodeArgsError, upgrade_node_args
from wemixvisor.node.process import detect_version
from wemixvisor.plans.queue import Plan
from wemixvisor.upgrade.download import DownloadError, download_binary, plan_has_binaries

_fetch_locks: dict[Path, threading.Lock] = {}
_fetch_locks_guard = threading.Lock()
# The space verdict of each plan's last early check, for the quick check at H: (home, plan
# name, height) → the problem, or None when the backup fits.
_space_verdicts: dict[tuple[Path, str, int], str | None] = {}
_space_guard = threading.Lock()


def custom_preupgrade_path(home: Home, config: Config) -> Path | None:
    """The configured custom pre-upgrade script, or None when there is none."""
    name = config.upgrade.custom_preupgrade
    return home.visor_dir / name if name else None


def check_plan(
    home: Home,
    config: Config,
    plan: Plan,
    *,
    quick: bool = False,
    binary_due: bool = True,
    space: bool = True,
    usage: DataUsage | None = None,
    free: Free | None = None,
) -> list[str]:
    """Problems that would make the upgrade fail; an empty list means ready.

    Without `quick`, the new binary is also run (`version`, else `--version`, cached per
    binary file) to prove it executes on this machine, and the backup's space (bytes and
    inodes) is measured; `usage` and `free` give the data dir's size and the free space when
    already measured. `quick` takes the space verdict of the plan's last early check. Without
    `binary_due` an absent binary is no problem (it is still to be downloaded); without
    `space`, the backup's space is not checked. In VALIDATOR_MODE the node must serve
    `istanbul_*` (checked without `quick`).
    """
    problems: list[str] = []
    try:
        binary = home.upgrade_bin(plan.name)
    except LayoutError as exc:
        return [str(exc)]
    try:
        if binary_due or os.path.lexists(binary):
            check_binary(binary)
    except LayoutError as exc:
        problems.append(f"new binary: {exc}")
    else:
        if not quick and detect_version(binary) is None:
            problems.append(
                f"new binary {binary} reports no version (`version` or `--version` failed)"
            )
    try:
        upgrade_node_args(home.upgrade_dir(plan.name), plan.info)
    except NodeArgsError as exc:
        problems.append(f"node arguments: {exc}")
    script = custom_preupgrade_path(home, config)
    if script is not None:
        try:
            check_binary(script)
        except LayoutError as exc:
            problems.append(f"custom pre-upgrade script: {exc}")
    if space and not config.backup.skip:
        shortage = _space_verdict(home, config, plan, quick=quick, usage=usage, free=free)
        if shortage is not None:
            problems.append(shortage)
    if not quick:
        problems += validator_problems(config)
    return problems


def registration_problems(home: Home, config: Config, plan: Plan) -> list[str]:
    """The first preflight, answered to whoever schedules the plan: stat calls only (the full
    checks follow on the daemon's preflight thread). A binary still to be downloaded is not a
    problem yet: its download reports how it went."""
    downloading = config.upgrade.allow_download_binaries and plan_has_binaries(plan)
    return check_plan(home, config, plan, quick=True, binary_due=not downloading, space=False)


def validator_problems(config: Config) -> list[str]:
    """VALIDATOR_MODE: the node must serve `istanbul_*` (SPEC §13.2); "method not found" fails
    every plan's preflight, naming the two fixes, until the namespace answers."""
    if not config.node.validator_mode:
        return []
    client = ChainClient(config.rpc.address, timeout=min(config.rpc.timeout, 5.0))
    try:
        problem = istanbul_problem(WbftClient(client))
    finally:
        client.close()
    return [] if problem is None else [problem]


def _space_verdict(
    home: Home,
    config: Config,
    plan: Plan,
    *,
    quick: bool,
    usage: DataUsage | None,
    free: Free | None,
) -> str | None:
    key = (home.root, plan.name, plan.height)
    if quick:
        with _space_guard:
            if key in _space_verdicts:
                return _space_verdicts[key]
    try:
        shortage = upgrade_space_problem(
            home.data_dir, config.backup.dir, plan.name, usage=usage, free=free
        )
    except (BackupError, OSError) as exc:
        shortage = f"cannot size the backup: {exc}"
    with _space_guard:
        _space_verdicts[key] = shortage
    return shortage


def preflight_plans(
    home: Home,
    config: Config,
    plans: Sequence[Plan],
    *,
    publish: Callable[[Event], None],
    report: Callable[[Plan, list[str]], None],
    stopping: threading.Event,
) -> None:
    """The early checks of `plans`, in order, each reported as soon as it is done: a missing
    binary downloaded, the checks of `check_plan`, the validator quorum warning. The data dir
    is measured once for all of them; stops between two plans once `stopping` is set."""
    usage: DataUsage | None = None
    free: Free | None = None
    for plan in plans:
        if stopping.is_set():
            return
        problems = fetch_missing_binary(home, config, plan, publish=publish)
        if usage is None and not config.backup.skip:
            try:
                usage, free = DataUsage(home.data_dir), free_space(config.backup.dir)
            except (BackupError, OSError):
                usage, free = None, None  # check_plan reports it per plan
        problems += check_plan(home, config, plan, usage=usage, free=free)
        warn_if_quorum_at_risk(config, plan, publish=publish)
        report(plan, problems)


def fetch_missing_binary(
    home: Home, config: Config, plan: Plan, *, publish: Callable[[Event], None]
) -> list[str]:
    """Download the plan's binary when it is absent and the plan says where from (SPEC §5, §8).

    Runs on a preflight thread, hours before H: never at H. Returns problems; an empty list
    when the binary was already there, was installed now, or the plan names no download (then
    `check_plan` reports the missing binary). `download.*` events go to `publish`.
    """
    try:
        binary = home.upgrade_bin(plan.name)
    except LayoutError:
        return []  # check_plan reports the bad name
    with _fetch_locks_guard:
        lock = _fetch_locks.setdefault(binary, threading.Lock())
    # Preflights of one plan may overlap (registration, near H, re-checks): the later ones wait
    # for the download in progress and then find the binary installed.
    with lock:
        if os.path.lexists(binary) or not plan_has_binaries(plan):
            return []
        if not config.upgrade.allow_download_binaries:
            return [
                f"new binary {binary} is missing and downloading it from the plan's info is"
                " disabled (DAEMON_ALLOW_DOWNLOAD_BINARIES=false)"
            ]
        try:
            download_binary(
                home,
                plan,
                must_have_checksum=config.upgrade.download_must_have_checksum,
                publish=publish,
            )
        except DownloadError as exc:
            return [f"download of the new binary failed: {exc}"]
    return []


def warn_if_quorum_at_risk(config: Config, plan: Plan, *, publish: Callable[[Event], None]) -> None:
    """Validator mode: publish `validator.quorum_at_risk` when this node's downtime at the
    plan's height would leave fewer active validators (judged by who sealed recently,
    `istanbul_status`) than WBFT's quorum ⌈n - (n-1)/3⌉ (SPEC §13.2).

    A warning, never a preflight failure: the upgrade stays scheduled. Quiet on a chain without
    `istanbul_*` and when the node does not answer (the regular checks report that).
    """
    if not config.node.validator_mode:
        return
    chain = ChainClient(config.rpc.address, timeout=min(config.rpc.timeout, 5.0))
    try:
        me, risk = assess_quorum(WbftClient(chain))
    except RpcError:
        return
    finally:
        chain.close()
    if not risk.at_risk:
        return
    logger.warning(
        "upgrade {} at {}: while this validator is down only {} of {} validators are active,"
        " below the quorum of {}",
        plan.name,
        plan.height,
        risk.active_without_me,
        risk.validators,
        risk.quorum,
    )
    publish(
        ValidatorQuorumAtRisk(
            address=me,
            plan=plan.name,
            height=plan.height,
            validators=risk.validators,
            quorum=risk.quorum,
            active=risk.active,
            active_without_me=risk.active_without_me,
        )
    )
