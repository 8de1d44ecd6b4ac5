"""Frozen entry point of the agent plugin executable (plugin_cmd in agent.conf)."""

from agent_plugin.main import main

main()
