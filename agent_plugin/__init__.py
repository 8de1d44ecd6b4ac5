"""The agent-side plugin: proves this node's identity with its TPM."""
