// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @title UpgradeGovernance
/// @notice On-chain approval of node software upgrades. It speaks the proposal dialect of the
/// WBFT GovBase system contracts (events, `getProposal` struct, status values, entry points,
/// auto-approval by the proposer, auto-execution at quorum, lazy expiry, retries) and adds one
/// action: UPGRADE, whose execution records an upgrade plan (name, height, info as in
/// wemixvisor's upgrade-info.json) as final on chain.
/// @dev An UPGRADE execution fails (success=false, the proposal stays Approved and may be
/// retried up to MAX_RETRY_COUNT attempts in all) when its height is not above the block that
/// executes it, or when an upgrade of the same name is already recorded. The daemon still
/// validates the plan data (name, info) when it turns an executed proposal into a plan.
contract UpgradeGovernance {
    enum ProposalStatus {
        None,
        Voting,
        Approved,
        Executed,
        Cancelled,
        Expired,
        Failed,
        Rejected
    }

    struct Proposal {
        bytes32 actionType;
        uint256 memberVersion;
        uint256 votedBitmap;
        uint256 createdAt;
        uint256 executedAt;
        address proposer;
        uint32 requiredApprovals;
        uint32 approved;
        uint32 rejected;
        ProposalStatus status;
        bytes callData;
    }

    struct Upgrade {
        uint64 height;
        uint256 proposalId;
    }

    error NotAMember();
    error InvalidMembers();
    error InvalidQuorum();
    error InvalidExpiry();
    error UnknownProposal(uint256 proposalId);
    error AlreadyVoted(uint256 proposalId);
    error NotVoting(uint256 proposalId);
    error NotApproved(uint256 proposalId);
    error NotProposer(uint256 proposalId);
    error NotExpired(uint256 proposalId);

    event ProposalCreated(
        uint256 indexed proposalId,
        address indexed proposer,
        bytes32 actionType,
        uint256 memberVersion,
        uint256 requiredApprovals,
        bytes callData
    );
    event ProposalVoted(
        uint256 indexed proposalId,
        address indexed voter,
        bool approval,
        uint256 approved,
        uint256 rejected
    );
    event ProposalApproved(
        uint256 indexed proposalId, address indexed approver, uint256 approved, uint256 rejected
    );
    event ProposalRejected(
        uint256 indexed proposalId, address indexed rejector, uint256 approved, uint256 rejected
    );
    event ProposalExecuted(uint256 indexed proposalId, address indexed executor, bool success);
    event ProposalFailed(uint256 indexed proposalId, address indexed executor, bytes reason);
    event ProposalExpired(uint256 indexed proposalId, address indexed executor);
    event ProposalCancelled(uint256 indexed proposalId, address indexed canceller);

    /// @notice The only action of this contract: record an upgrade plan.
    bytes32 public constant UPGRADE = keccak256("UPGRADE");
    /// @notice Execution attempts of an approved proposal before it is Failed for good.
    uint256 public constant MAX_RETRY_COUNT = 3;
    /// @notice The member set never changes, so every proposal has member version 1.
    uint256 public constant MEMBER_VERSION = 1;

    /// @notice Approvals a proposal needs (the proposer's included).
    uint32 public immutable quorum;
    /// @notice Seconds a proposal stays open: it expires once block.timestamp is past
    /// createdAt + proposalExpiry (lazily: nothing is emitted until someone touches it).
    uint256 public immutable proposalExpiry;
    /// @notice Number of members (fixed at deployment).
    uint256 public immutable memberCount;
    /// @notice Id of the latest proposal; ids start at 1.
    uint256 public currentProposalId;

    /// @notice 1 + the member's bit in votedBitmap; 0 for a non-member.
    mapping(address => uint256) public memberIndex;
    /// @notice Execution attempts of each proposal so far.
    mapping(uint256 => uint256) public executionAttempts;
    mapping(uint256 => Proposal) private _proposals;
    mapping(bytes32 => Upgrade) private _upgrades;

    modifier onlyMember() {
        if (memberIndex[msg.sender] == 0) revert NotAMember();
        _;
    }

    /// @param members the voting members: 1..256, non-zero, no duplicates
    /// @param quorum_ approvals needed, 1..members.length
    /// @param proposalExpiry_ seconds a proposal stays open, > 0
    constructor(address[] memory members, uint32 quorum_, uint256 proposalExpiry_) {
        if (members.length == 0 || members.length > 256) revert InvalidMembers();
        for (uint256 i = 0; i < members.length; i++) {
            address member = members[i];
            if (member == address(0) || memberIndex[member] != 0) revert InvalidMembers();
            memberIndex[member] = i + 1;
        }
        if (quorum_ == 0 || quorum_ > members.length) revert InvalidQuorum();
        if (proposalExpiry_ == 0) revert InvalidExpiry();
        quorum = quorum_;
        proposalExpiry = proposalExpiry_;
        memberCount = members.length;
    }

    /// @notice Propose upgrade `name` at block `height`; `info` is the plan's info (a JSON object
    /// as a string, or an URL to one). Proposing is the proposer's approval: with a quorum of 1
    /// the proposal is executed at once.
    function proposeUpgrade(string calldata name, uint64 height, string calldata info)
        external
        onlyMember
        returns (uint256 proposalId)
    {
        proposalId = ++currentProposalId;
        Proposal storage proposal = _proposals[proposalId];
        proposal.actionType = UPGRADE;
        proposal.memberVersion = MEMBER_VERSION;
        proposal.createdAt = block.timestamp;
        proposal.proposer = msg.sender;
        proposal.requiredApprovals = quorum;
        proposal.status = ProposalStatus.Voting;
        proposal.callData = abi.encode(name, height, info);
        emit ProposalCreated(
            proposalId, msg.sender, UPGRADE, MEMBER_VERSION, quorum, proposal.callData
        );
        _vote(proposalId, proposal, true);
    }

    /// @notice Vote for proposal `proposalId`; the vote that reaches quorum executes it.
    function approveProposal(uint256 proposalId) external onlyMember {
        Proposal storage proposal = _existing(proposalId);
        if (_expire(proposalId, proposal)) return;
        _vote(proposalId, proposal, true);
    }

    /// @notice Vote against proposal `proposalId`; it is Rejected once quorum is out of reach.
    function disapproveProposal(uint256 proposalId) external onlyMember {
        Proposal storage proposal = _existing(proposalId);
        if (_expire(proposalId, proposal)) return;
        _vote(proposalId, proposal, false);
    }

    /// @notice Withdraw proposal `proposalId`: its proposer only, while it is Voting.
    function cancelProposal(uint256 proposalId) external onlyMember {
        Proposal storage proposal = _existing(proposalId);
        if (proposal.proposer != msg.sender) revert NotProposer(proposalId);
        if (_expire(proposalId, proposal)) return;
        if (proposal.status != ProposalStatus.Voting) revert NotVoting(proposalId);
        proposal.status = ProposalStatus.Cancelled;
        emit ProposalCancelled(proposalId, msg.sender);
    }

    /// @notice Try again to execute an Approved proposal whose execution failed.
    function executeProposal(uint256 proposalId) external onlyMember {
        Proposal storage proposal = _existing(proposalId);
        if (_expire(proposalId, proposal)) return;
        if (proposal.status != ProposalStatus.Approved) revert NotApproved(proposalId);
        _execute(proposalId, proposal);
    }

    /// @notice Mark an open proposal whose time has passed as Expired.
    function expireProposal(uint256 proposalId) external onlyMember {
        Proposal storage proposal = _existing(proposalId);
        if (!_expire(proposalId, proposal)) revert NotExpired(proposalId);
    }

    /// @notice Proposal `proposalId` as stored (status None for an unknown id). An open proposal
    /// past its expiry still reads Voting or Approved until it is touched.
    function getProposal(uint256 proposalId) external view returns (Proposal memory) {
        return _proposals[proposalId];
    }

    /// @notice The upgrade recorded as final under `name`: its height and the proposal that
    /// recorded it (both 0 when there is none).
    function getUpgrade(string calldata name)
        external
        view
        returns (uint64 height, uint256 proposalId)
    {
        Upgrade storage upgrade = _upgrades[keccak256(bytes(name))];
        return (upgrade.height, upgrade.proposalId);
    }

    /// @notice Whether `account` is a member.
    function isMember(address account) external view returns (bool) {
        return memberIndex[account] != 0;
    }

    function _vote(uint256 proposalId, Proposal storage proposal, bool approval) private {
        if (proposal.status != ProposalStatus.Voting) revert NotVoting(proposalId);
        uint256 bit = 1 << (memberIndex[msg.sender] - 1);
        if (proposal.votedBitmap & bit != 0) revert AlreadyVoted(proposalId);
        proposal.votedBitmap |= bit;
        if (approval) {
            proposal.approved += 1;
        } else {
            proposal.rejected += 1;
        }
        emit ProposalVoted(proposalId, msg.sender, approval, proposal.approved, proposal.rejected);
        if (proposal.approved >= proposal.requiredApprovals) {
            proposal.status = ProposalStatus.Approved;
            emit ProposalApproved(proposalId, msg.sender, proposal.approved, proposal.rejected);
            _execute(proposalId, proposal);
        } else if (memberCount - proposal.rejected < proposal.requiredApprovals) {
            // Rejected as soon as the members who have not voted against cannot reach quorum.
            proposal.status = ProposalStatus.Rejected;
            emit ProposalRejected(proposalId, msg.sender, proposal.approved, proposal.rejected);
        }
    }

    function _execute(uint256 proposalId, Proposal storage proposal) private {
        uint256 attempts = ++executionAttempts[proposalId];
        bytes memory reason = _recordUpgrade(proposalId, proposal.callData);
        if (reason.length == 0) {
            proposal.status = ProposalStatus.Executed;
            proposal.executedAt = block.timestamp;
            emit ProposalExecuted(proposalId, msg.sender, true);
            return;
        }
        emit ProposalExecuted(proposalId, msg.sender, false);
        if (attempts >= MAX_RETRY_COUNT) {
            proposal.status = ProposalStatus.Failed;
            emit ProposalFailed(proposalId, msg.sender, reason);
        }
    }

    /// @return reason empty when the upgrade was recorded, else why it was not
    function _recordUpgrade(uint256 proposalId, bytes memory callData)
        private
        returns (bytes memory reason)
    {
        (string memory name, uint64 height,) = abi.decode(callData, (string, uint64, string));
        if (height <= block.number) return bytes("height has passed");
        Upgrade storage upgrade = _upgrades[keccak256(bytes(name))];
        if (upgrade.proposalId != 0) return bytes("upgrade already recorded");
        upgrade.height = height;
        upgrade.proposalId = proposalId;
        return "";
    }

    /// @return expired whether the proposal was open and past its expiry (now Expired)
    function _expire(uint256 proposalId, Proposal storage proposal) private returns (bool expired) {
        bool open =
            proposal.status == ProposalStatus.Voting || proposal.status == ProposalStatus.Approved;
        if (!open || block.timestamp <= proposal.createdAt + proposalExpiry) return false;
        proposal.status = ProposalStatus.Expired;
        emit ProposalExpired(proposalId, msg.sender);
        return true;
    }

    function _existing(uint256 proposalId) private view returns (Proposal storage proposal) {
        if (proposalId == 0 || proposalId > currentProposalId) revert UnknownProposal(proposalId);
        return _proposals[proposalId];
    }
}
