// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @title UpgradeGovernance
/// @notice On-chain approval of node software upgrades, in the style of the WBFT GovBase system
/// contracts: a fixed member set votes on proposals; a proposal with `quorum` approvals may be
/// executed once, and an executed proposal is an upgrade plan that wemixvisor registers
/// (name, height, info as in its upgrade-info.json).
/// @dev The contract only records decisions: the daemon validates the plan data (name, height,
/// info) when it turns an executed proposal into a plan, and rejects what it cannot run.
contract UpgradeGovernance {
    enum State {
        Voting,
        Approved,
        Rejected,
        Executed
    }

    struct Proposal {
        address proposer;
        uint64 height;
        State state;
        uint256 approvals;
        uint256 disapprovals;
        string name;
        string info;
    }

    error NotAMember();
    error InvalidMembers();
    error InvalidQuorum();
    error UnknownProposal(uint256 id);
    error AlreadyVoted(uint256 id);
    error NotVoting(uint256 id);
    error NotApproved(uint256 id);

    event ProposalCreated(uint256 indexed id, address indexed proposer, string name, uint64 height);
    event ProposalVoted(uint256 indexed id, address indexed voter, bool approve);
    event ProposalApproved(uint256 indexed id);
    event ProposalRejected(uint256 indexed id);
    event ProposalExecuted(uint256 indexed id);

    /// @notice Approvals a proposal needs before it can be executed.
    uint256 public immutable quorum;
    /// @notice Number of members (fixed at deployment).
    uint256 public immutable memberCount;
    /// @notice Id of the latest proposal; ids start at 1.
    uint256 public proposalCount;

    mapping(address => bool) public isMember;
    mapping(uint256 => mapping(address => bool)) public hasVoted;
    mapping(uint256 => Proposal) private _proposals;

    modifier onlyMember() {
        if (!isMember[msg.sender]) revert NotAMember();
        _;
    }

    /// @param members the voting members: non-zero, no duplicates
    /// @param quorum_ approvals needed, 1..members.length
    constructor(address[] memory members, uint256 quorum_) {
        if (members.length == 0) revert InvalidMembers();
        for (uint256 i = 0; i < members.length; i++) {
            address member = members[i];
            if (member == address(0) || isMember[member]) revert InvalidMembers();
            isMember[member] = true;
        }
        if (quorum_ == 0 || quorum_ > members.length) revert InvalidQuorum();
        quorum = quorum_;
        memberCount = members.length;
    }

    /// @notice Propose upgrade `name` at block `height`; `info` is the plan's info (a JSON object
    /// as a string, or an URL to one). The proposer does not vote by proposing.
    function propose(string calldata name, uint64 height, string calldata info)
        external
        onlyMember
        returns (uint256 id)
    {
        id = ++proposalCount;
        Proposal storage proposal = _proposals[id];
        proposal.proposer = msg.sender;
        proposal.height = height;
        proposal.name = name;
        proposal.info = info;
        emit ProposalCreated(id, msg.sender, name, height);
    }

    /// @notice Vote for proposal `id` (once per member, while it is voting).
    function approve(uint256 id) external onlyMember {
        _vote(id, true);
    }

    /// @notice Vote against proposal `id` (once per member, while it is voting).
    function disapprove(uint256 id) external onlyMember {
        _vote(id, false);
    }

    /// @notice Execute an approved proposal; only once.
    function execute(uint256 id) external onlyMember {
        Proposal storage proposal = _existing(id);
        if (proposal.state != State.Approved) revert NotApproved(id);
        proposal.state = State.Executed;
        emit ProposalExecuted(id);
    }

    /// @notice The whole proposal `id`; reverts for an unknown id.
    function getProposal(uint256 id)
        external
        view
        returns (
            address proposer,
            string memory name,
            uint64 height,
            string memory info,
            uint256 approvals,
            uint256 disapprovals,
            State state
        )
    {
        Proposal storage proposal = _existing(id);
        return (
            proposal.proposer,
            proposal.name,
            proposal.height,
            proposal.info,
            proposal.approvals,
            proposal.disapprovals,
            proposal.state
        );
    }

    function _vote(uint256 id, bool approve_) private {
        Proposal storage proposal = _existing(id);
        if (proposal.state != State.Voting) revert NotVoting(id);
        if (hasVoted[id][msg.sender]) revert AlreadyVoted(id);
        hasVoted[id][msg.sender] = true;
        emit ProposalVoted(id, msg.sender, approve_);
        if (approve_) {
            proposal.approvals += 1;
            if (proposal.approvals >= quorum) {
                proposal.state = State.Approved;
                emit ProposalApproved(id);
            }
        } else {
            proposal.disapprovals += 1;
            // Rejected as soon as the members who have not voted against cannot reach quorum.
            if (memberCount - proposal.disapprovals < quorum) {
                proposal.state = State.Rejected;
                emit ProposalRejected(id);
            }
        }
    }

    function _existing(uint256 id) private view returns (Proposal storage proposal) {
        if (id == 0 || id > proposalCount) revert UnknownProposal(id);
        return _proposals[id];
    }
}
