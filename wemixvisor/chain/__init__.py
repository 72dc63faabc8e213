"""What the daemon knows of the chain: JSON-RPC, head watching, WBFT facts, governance."""
