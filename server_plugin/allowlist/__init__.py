"""Allowlist and deny-list sources: where the server looks up EK hashes.

base.py       AllowlistEntry, AllowlistError, the AllowlistSource base class
directory.py  one file per EK hash: flat (`hash_path`) and bucketed layouts
document.py   the JSON document: its format, the compact index, rendering (export)
file.py       a document kept in a local file, reloaded when it changes
http.py       a document fetched from an HTTP(S) endpoint and refreshed
config.py     the `hash_path`, `allowlist` and `denylist` options
"""

from server_plugin.allowlist.base import AllowlistEntry, AllowlistError, AllowlistSource

__all__ = ["AllowlistEntry", "AllowlistError", "AllowlistSource"]
