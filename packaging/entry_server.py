"""Frozen entry point of the server plugin executable (plugin_cmd in server.conf)."""

from server_plugin.main import main

main()
