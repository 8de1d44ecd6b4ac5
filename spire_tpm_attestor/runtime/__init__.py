"""The go-plugin / SPIRE plugin runtime shared by the agent and server plugins."""
