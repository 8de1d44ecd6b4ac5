"""URL splitting that refuses instead of raising.

`urllib.parse.urlsplit` raises ValueError for some strings (an unclosed IPv6 bracket:
"https://host:844[/x"); URLs come from operators' configuration and from certificates'
AIA extensions, and neither may turn into an unexpected exception.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit


def split_url(url: str) -> SplitResult | None:
    """`url`'s parts, or None when it cannot be split."""
    try:
        return urlsplit(url)
    except ValueError:
        return None


def http_hostname(url: str) -> str | None:
    """The lowercase host of an absolute http:// or https:// URL, else None."""
    parts = split_url(url)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.hostname.lower()
