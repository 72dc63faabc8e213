"""GovernanceActor: on-chain governance and validator facts (SPEC §13.2, §13.3).

Two threads do the network I/O and report back with messages:

- the log follower (`wemixvisor.chain.governance.LogFollower`), only while contracts are configured:
  every `poll_interval` it reads the configured contracts' logs up to head - `confirmations`;
- the chain-facts poller (a worker): `istanbul_*` facts for `status`, every CHAIN_REFRESH seconds
  on a WBFT chain, every NOT_WBFT_RECHECK seconds elsewhere (one "method not found" answer,
  quietly).

The actor folds each batch into its proposals, publishes `governance.proposal` for every change,
and turns an executed proposal of an `upgrade` contract into a plan with source `governance` (or
`plan.rejected` when its data must not run). What it applied is saved in state/governance.json,
so a restarted daemon resumes after the last processed block and handles an execution once.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pykka
from loguru import logger

from wemixvisor.actors.base import FailureSink, SupervisedActor
from wemixvisor.actors.workers import Poller, tell_if_alive
from wemixvisor.bus import Bus
from wemixvisor.chain import governance as gov
from wemixvisor.chain.client import ChainClient
from wemixvisor.chain.rpc import RpcError
from wemixvisor.chain.wbft import WbftClient, read_chain_info
from wemixvisor.config import Config
from wemixvisor.home.layout import Home
from wemixvisor.home.state import governance_file
from wemixvisor.messages import events as ev
from wemixvisor.messages.config import ConfigChanged
from wemixvisor.messages.governance import (
    ChainInfo,
    GetChainInfo,
    GetProposals,
    Proposal,
    ProposalState,
)
from wemixvisor.messages.plans import RegisterPlans
from wemixvisor.plans.queue import MAX_HEIGHT, PlanError, validate_name

CHAIN_REFRESH = 30.0
"""Seconds between two reads of the validator facts on a WBFT chain."""
NOT_WBFT_RECHECK = 600.0
"""Seconds between two probes of a chain without `istanbul_*` (a new binary may bring it)."""
CHAIN_RETRY = 5.0
"""Seconds before asking again when the node did not answer."""
CURSOR_SAVE_INTERVAL = 30.0
"""Progress without any proposal change is saved at most this often (re-reading a few blocks
after a crash is harmless: executions already handled are recorded with their proposal)."""
REGISTER_RETRY = 1.0
"""Seconds between two attempts to hand a plan to an orchestrator that is not there yet."""

_ORCHESTRATOR = "orchestrator"
_PENDING = "pending"
_SENT = "sent"


class Handoff(enum.StrEnum):
    """What the actor does with a proposal (`decide_handoff`)."""

    IGNORE = "ignore"  # never becomes a plan: not an upgrade contract's, or over unexecuted
    TRACK = "track"  # still voting or approved: followed and reported, nothing to hand over
    HAND_OVER = "hand_over"  # executed, its plan not yet taken by the orchestrator
    REJECT = "reject"  # executed, but its plan data must not run
    HANDED = "handed"  # handed over (or rejected) before: nothing more to do


_OPEN = (ProposalState.VOTING, ProposalState.APPROVED)


def decide_handoff(
    proposal: Proposal, *, executed: bool = False, unreadable: str | None = None
) -> tuple[Handoff, str]:
    """What to do with `proposal` now, and why when it is rejected.

    `executed`: a batch just reported its execution. `unreadable` is why the proposal's plan
    data could not be read from the chain, if so.
    """
    if proposal.kind != gov.UPGRADE:
        return Handoff.IGNORE, ""
    if proposal.plan == _PENDING:
        return Handoff.HAND_OVER, ""
    if proposal.plan is not None:
        return Handoff.HANDED, ""  # sent (its answer awaited), registered or rejected
    if not executed and proposal.state is not ProposalState.EXECUTED:
        return (Handoff.TRACK if proposal.state in _OPEN else Handoff.IGNORE), ""
    if unreadable is not None:
        return Handoff.REJECT, f"proposal {proposal.id} is unreadable: {unreadable}"
    try:
        gov.plan_from_proposal(proposal)
    except PlanError as exc:
        return Handoff.REJECT, str(exc)
    return Handoff.HAND_OVER, ""


class _Batch(msgspec.Struct, frozen=True):
    generation: int
    batch: gov.ContractBatch


class _FollowFailed(msgspec.Struct, frozen=True):
    generation: int
    error: str


class _ChainRead(msgspec.Struct, frozen=True):
    info: ChainInfo | None
    error: str | None
    next_in: float  # seconds until the next read


class _PlanOutcome(msgspec.Struct, frozen=True):
    contract: str
    id: int
    outcome: str


class _RetryRegistrations(msgspec.Struct, frozen=True):
    pass


class _OutcomeSink:
    """Stands in for RegisterPlans' `done` future: the orchestrator's answer comes back to this
    actor as a message instead of being waited for."""

    def __init__(self, ref: pykka.ActorRef[Any], contract: str, proposal_id: int) -> None:
        self._ref = ref
        self._contract = contract
        self._id = proposal_id

    def set(self, answers: list[tuple[str, str]]) -> None:
        outcome = answers[0][1] if answers else "unknown"
        tell_if_alive(self._ref, _PlanOutcome(self._contract, self._id, outcome))


def _chain_reader(address: str, timeout: float) -> Callable[[], _ChainRead]:
    """One read of the validator facts, as the chain-facts poller's call."""
    client = WbftClient(ChainClient(address, timeout=timeout))

    def read() -> _ChainRead:
        try:
            info = read_chain_info(client)
        except RpcError as exc:
            return _ChainRead(None, str(exc), CHAIN_RETRY)
        except Exception as exc:  # noqa: BLE001 - the facts are optional, the poller is not
            logger.opt(exception=exc).error("reading the validator facts failed")
            return _ChainRead(None, f"{type(exc).__name__}: {exc}", CHAIN_REFRESH)
        return _ChainRead(info, None, CHAIN_REFRESH if info.wbft else NOT_WBFT_RECHECK)

    return read


class GovernanceActor(SupervisedActor):
    """Follows governance contracts and knows the node's validator facts."""

    role = "governance"

    def __init__(
        self, *, config: Config, home: Home, bus: Bus, failure_sink: FailureSink | None = None
    ) -> None:
        super().__init__(failure_sink)
        self._config = config
        self._bus = bus
        self._state_file = governance_file(home)
        self._progress: dict[str, gov.ContractProgress] = {}
        self._proposals: dict[str, dict[int, Proposal]] = {}
        self._generation = 0
        self._follower: gov.LogFollower | None = None
        self._follow_poller: Poller | None = None
        self._chain = ChainInfo()
        self._follow_error: str | None = None
        self._followed_once = False
        self._dirty = False
        self._saved_at = 0.0

    # lifecycle

    def setup(self) -> None:
        state = gov.load_state(self._state_file)
        for progress in state.contracts:
            self._progress[progress.address.lower()] = progress
        for proposal in state.proposals:
            self._proposals.setdefault(proposal.contract.lower(), {})[proposal.id] = proposal
        self._follow(self._config)
        self._start_prober()
        # Plans handed over before a restart may not have reached the queue: hand them again
        # (the queue ignores a plan it already has).
        for contract, proposals in self._proposals.items():
            for proposal in list(proposals.values()):
                if proposal.plan == _SENT:
                    self._set_plan(contract, proposal.id, _PENDING)
        self._register_pending()

    def release(self) -> None:
        # Also after a failure: the actor the supervisor starts next follows the logs itself.
        self._stop_following()

    def teardown(self) -> None:
        if self._dirty:
            self._save()

    # messages

    def on_receive(self, message: Any) -> Any:
        match message:
            case _Batch(generation=generation) if generation == self._generation:
                self._on_batch(message.batch)
            case _FollowFailed(generation=generation) if generation == self._generation:
                self._on_follow_failed(message.error)
            case _ChainRead():
                self._on_chain_read(message.info, message.error)
            case _Batch() | _FollowFailed():
                pass  # from a follower that has been replaced
            case _PlanOutcome():
                self._on_plan_outcome(message)
            case _RetryRegistrations():
                self._register_pending()
            case GetProposals():
                return self._list()
            case GetChainInfo():
                return self._chain
            case ConfigChanged(config=config):
                self._apply_config(config)
            case _:
                logger.warning("governance actor: unexpected message {!r}", message)
        return None

    # the log follower and the chain-facts poller

    def _follow(self, config: Config) -> None:
        """(Re)start the log follower for the configured contracts; none without contracts."""
        self._stop_following()
        self._generation += 1
        configured = {c.address.lower(): c.kind for c in config.governance.contracts}
        for address, kind in configured.items():
            progress = self._progress.get(address)
            if progress is None or progress.kind != kind:
                self._progress[address] = gov.ContractProgress(address=address, kind=kind)
                self._proposals.pop(address, None)
                self._dirty = True
        for address in [a for a in self._progress if a not in configured]:
            # No longer followed: its proposals are no longer reported either.
            del self._progress[address]
            self._proposals.pop(address, None)
            self._dirty = True
        if not configured:
            return
        generation = self._generation
        ref = self.actor_ref

        def on_batch(batch: gov.ContractBatch) -> None:
            tell_if_alive(ref, _Batch(generation, batch))

        follower = gov.LogFollower(
            config.rpc.address,
            timeout=config.rpc.timeout,
            contracts=[
                gov.FollowedContract(
                    address=p.address,
                    kind=p.kind,
                    next_block=p.next_block,
                    quorum=p.quorum,
                    expiry=p.expiry,
                    open={
                        i
                        for i, proposal in self._proposals.get(p.address.lower(), {}).items()
                        if not gov.is_finished(proposal)
                    },
                )
                for p in self._progress.values()
            ],
            confirmations=config.governance.confirmations,
            on_batch=on_batch,
        )

        def poll() -> _FollowFailed | None:
            error = follower.poll_once()
            return _FollowFailed(generation, error) if error is not None else None

        self._follower = follower
        self._follow_poller = self.workers.poll(
            "governance-logs", poll, config.governance.poll_interval
        )
        logger.info(
            "following {} governance contract(s) on {} ({} confirmations)",
            len(configured),
            config.rpc.address,
            config.governance.confirmations,
        )

    def _stop_following(self) -> None:
        if self._follow_poller is not None:
            self._follow_poller.stop()
            self._follow_poller = None
        if self._follower is not None:
            self._follower.stop()
            self._follower = None

    def _start_prober(self) -> None:
        timeout = min(self._config.rpc.timeout, 5.0)
        self.workers.poll(
            "chain-facts",
            _chain_reader(self._config.rpc.address, timeout),
            CHAIN_REFRESH,
            interval_after=lambda read: float(read.next_in),
        )

    # follower reports

    def _on_follow_failed(self, error: str) -> None:
        if self._follow_error is None:
            # Once per outage, and not while the node is still starting: the height actor
            # reports RPC trouble already.
            log = logger.info if self._followed_once else logger.debug
            log("governance: cannot read logs ({}); retrying", error)
        self._follow_error = error

    def _on_batch(self, batch: gov.ContractBatch) -> None:
        if self._follow_error is not None and self._followed_once:
            logger.info("governance: reading logs again")
        self._follow_error = None
        self._followed_once = True
        address = batch.contract.lower()
        progress = self._progress.get(address)
        if progress is None or batch.from_block != progress.next_block:
            return  # a contract dropped meanwhile, or a batch already applied
        known = self._proposals.setdefault(address, {})
        changed, executed = gov.fold(known, batch)
        to_publish: list[ev.Event] = []
        for proposal_id, proposal in changed.items():
            before = known.get(proposal_id)
            known[proposal_id] = proposal
            if before is None or gov.published_view(before) != gov.published_view(proposal):
                to_publish.append(self._proposal_event(proposal))
        progress.next_block = batch.to_block + 1
        progress.quorum = batch.quorum
        progress.expiry = batch.expiry
        if batch.kind == gov.UPGRADE:
            for proposal_id in executed:
                rejection = self._on_executed(
                    address, proposal_id, batch.unreadable.get(proposal_id)
                )
                if rejection is not None:
                    to_publish.append(rejection)
        self._proposals[address] = gov.prune(known)
        # Saved before anything is told: a daemon killed in between reads nothing twice, so
        # no change is published twice and no execution handled twice.
        if changed or time.monotonic() - self._saved_at >= CURSOR_SAVE_INTERVAL:
            self._save()
        else:
            self._dirty = True
        for event in to_publish:
            self._bus.publish(event)
        self._register_pending()

    def _proposal_event(self, proposal: Proposal) -> ev.GovernanceProposal:
        logger.info(
            "governance proposal {} of {}: {} ({} for, {} against, quorum {})",
            proposal.id,
            proposal.contract,
            proposal.state,
            proposal.votes_for,
            proposal.votes_against,
            proposal.quorum,
        )
        return ev.GovernanceProposal(
            contract=proposal.contract,
            kind=proposal.kind,
            id=proposal.id,
            state=proposal.state.value,
            votes_for=proposal.votes_for,
            votes_against=proposal.votes_against,
            quorum=proposal.quorum,
            name=_shown_name(proposal.name),
            height=_shown_height(proposal.height),
            status=proposal.state.value,
            approved=proposal.approved,
            rejected=proposal.rejected,
            required=proposal.required,
            expires_at=proposal.expires_at,
            failed_executions=proposal.failed_executions,
        )

    # executed upgrade proposals

    def _on_executed(
        self, contract: str, proposal_id: int, unreadable: str | None
    ) -> ev.PlanRejected | None:
        """Decide what an executed upgrade proposal becomes: a plan to hand over (marked
        pending), or the `plan.rejected` event to publish once the decision is saved."""
        proposal = self._proposals[contract][proposal_id]
        decision, reason = decide_handoff(proposal, executed=True, unreadable=unreadable)
        if decision is Handoff.REJECT:
            self._set_plan(contract, proposal_id, f"rejected: {reason}")
            logger.warning(
                "executed governance proposal {} of {} rejected: {}", proposal_id, contract, reason
            )
            return ev.PlanRejected(
                reason=reason,
                source="governance",
                name=_shown_name(proposal.name),
                height=_shown_height(proposal.height),
            )
        if decision is not Handoff.HAND_OVER or proposal.plan is not None:
            return None  # handled before (a batch read again after a restart)
        plan = gov.plan_from_proposal(proposal)  # checked by decide_handoff
        logger.info(
            "governance proposal {} of {} executed: plan {} at height {}",
            proposal_id,
            contract,
            plan.name,
            plan.height,
        )
        self._set_plan(contract, proposal_id, _PENDING)
        return None

    def _register_pending(self) -> None:
        """Hand every executed proposal not yet taken to the orchestrator."""
        waiting = False
        for contract, proposals in self._proposals.items():
            for proposal in list(proposals.values()):
                if decide_handoff(proposal)[0] is not Handoff.HAND_OVER:
                    continue
                try:
                    plan = gov.plan_from_proposal(proposal)
                except PlanError:
                    continue  # cannot happen for a plan accepted before; never an upgrade
                message = RegisterPlans(
                    [plan],
                    source="governance",
                    done=_OutcomeSink(self.actor_ref, contract, proposal.id),
                )
                if self._bus.tell(_ORCHESTRATOR, message):
                    self._set_plan(contract, proposal.id, _SENT)
                else:
                    waiting = True
        if self._dirty:
            self._save()
        if waiting:
            # The orchestrator starts after this actor, and may be restarting: try again soon.
            self.timers.schedule("register", REGISTER_RETRY, _RetryRegistrations())

    def _on_plan_outcome(self, message: _PlanOutcome) -> None:
        proposal = self._proposals.get(message.contract, {}).get(message.id)
        if proposal is None:
            return
        outcome = message.outcome
        if not outcome.startswith("rejected"):
            outcome = "registered"  # added, updated, or already queued before
        self._set_plan(message.contract, message.id, outcome)
        self._save()

    def _set_plan(self, contract: str, proposal_id: int, plan: str) -> None:
        proposals = self._proposals[contract]
        proposals[proposal_id] = msgspec.structs.replace(proposals[proposal_id], plan=plan)
        self._dirty = True

    # chain facts

    def _on_chain_read(self, info: ChainInfo | None, error: str | None) -> None:
        if info is not None:
            if info.wbft is False and self._chain.wbft is not False:
                logger.info("not a WBFT chain (no istanbul_* methods): validator facts are off")
            self._chain = info
            return
        # Keep the last facts, saying why they are not fresh.
        self._chain = msgspec.structs.replace(self._chain, error=error)

    # configuration, answers, persistence

    def _apply_config(self, config: Config) -> None:
        old, new = self._config.governance, config.governance
        self._config = msgspec.structs.replace(self._config, governance=new)
        if old.contracts != new.contracts or old.confirmations != new.confirmations:
            self._follow(self._config)
            self._save()
        elif old.poll_interval != new.poll_interval and self._follow_poller is not None:
            self._follow_poller.set_interval(new.poll_interval)

    def _list(self) -> list[Proposal]:
        return [
            proposal
            for contract in sorted(self._proposals)
            for _, proposal in sorted(self._proposals[contract].items())
        ]

    def _save(self) -> None:
        state = gov.GovernanceState(
            contracts=list(self._progress.values()),
            proposals=[p for p in self._list() if p.contract in self._progress],
        )
        try:
            gov.save_state(self._state_file, state)
        except OSError as exc:
            logger.error("cannot save {}: {}", self._state_file, exc)
            return
        self._dirty = False
        self._saved_at = time.monotonic()


def _shown_name(name: str | None) -> str | None:
    """A proposal's name as events carry it: only a valid plan name (a hostile megabyte of
    text stays out of events; the rejection reason quotes it shortened)."""
    if name is None:
        return None
    try:
        return validate_name(name)
    except PlanError:
        return None


def _shown_height(height: int | None) -> int | None:
    return height if height is not None and 0 <= height <= MAX_HEIGHT else None
