"""The verbs that report: `version`, `governance_proposals` (daemon only)."""

from __future__ import annotations

from wemixvisor import __version__
from wemixvisor.control.protocol import GovernanceProposals, Version
from wemixvisor.control.verbs.base import Verb
from wemixvisor.control.verbs.daemon import ControlContext
from wemixvisor.control.verbs.render import render_proposals
from wemixvisor.control.verbs.replies import GovernanceProposalsReply, VersionNode, VersionReply
from wemixvisor.messages.governance import GetProposals, Proposal

__all__ = ["GovernanceProposalsVerb", "VersionVerb"]


class GovernanceProposalsVerb(Verb[ControlContext, GovernanceProposals, GovernanceProposalsReply]):
    """`governance_proposals`: what the governance actor follows (empty without one)."""

    request_type = GovernanceProposals
    reply_type = GovernanceProposalsReply
    summary = "The proposals of the governance contracts the daemon follows."

    def execute(
        self, ctx: ControlContext, request: GovernanceProposals
    ) -> GovernanceProposalsReply:
        if ctx.bus.ref("governance") is None:
            return GovernanceProposalsReply(
                proposals=[],
                note="governance is not followed (no governance actor is running)",
            )
        proposals: list[Proposal] = ctx.ask("governance", GetProposals())
        return GovernanceProposalsReply(proposals=list(proposals))

    def render(self, reply: GovernanceProposalsReply) -> str:
        return render_proposals(reply)


class VersionVerb(Verb[ControlContext, Version, VersionReply]):
    """`version`: wemixvisor's version and the node binary's."""

    request_type = Version
    reply_type = VersionReply
    summary = "wemixvisor's version and the node binary's."

    def execute(self, ctx: ControlContext, request: Version) -> VersionReply:
        status = ctx.node_status_or_none()
        node = (
            VersionNode(binary=status.binary, target=status.target, version=status.version)
            if status is not None
            else None
        )
        return VersionReply(
            wemixvisor=__version__, node=node, events_endpoint=ctx.config.events.endpoint
        )

    def render(self, reply: VersionReply) -> str:
        node = reply.node
        return (
            f"wemixvisor {reply.wemixvisor}\n"
            f"node: {(node.version if node else None) or 'version unknown'} "
            f"({(node.target if node else None) or '-'})"
        )
