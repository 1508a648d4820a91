"""Keep secrets that ride inside URLs out of logs, manifests, results and artifacts.

A URL can carry credentials in two places: userinfo (``https://user:token@host/...``) and
the query string of a presigned URL (``...?X-Amz-Signature=...``). ``redact_url`` replaces
the first with ``***`` and drops the second; ``redact`` applies it to every string in a JSON
value. Configs refuse userinfo where they can (``storage.s3_endpoint_url``); this covers the
URLs a user may legitimately pass, such as a presigned checkpoint URL.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

SECRET_QUERY_KEYS = frozenset(
    {
        "x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature",
        "awsaccesskeyid", "x-goog-signature", "x-goog-credential", "sig", "se", "sv",
        "token", "access_token", "api_key", "apikey", "key", "password", "secret",
    }
)  # fmt: skip
"""Query keys that mark a presigned or token-bearing URL (AWS, GCS, Azure SAS, generic)."""

REDACTED = "***"


def redact_url(value: str) -> str:
    """``value`` with URL userinfo masked and a secret-bearing query string removed;
    anything that is not a URL comes back unchanged."""
    if "://" not in value:
        return value
    try:
        parts = urlsplit(value)
        has_userinfo = parts.username is not None or parts.password is not None
        keys = {k.lower() for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    except ValueError:
        return value
    if not has_userinfo and not keys & SECRET_QUERY_KEYS:
        return value
    netloc = parts.netloc
    if has_userinfo:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = REDACTED if keys & SECRET_QUERY_KEYS else parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_text(text: str) -> str:
    """``redact_url`` on every URL inside a message (an exception's text, a log line)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def redact(obj: Any) -> Any:
    """``redact_url`` over every string in a JSON-like value (dict keys included)."""
    if isinstance(obj, str):
        return redact_url(obj)
    if isinstance(obj, dict):
        return {redact(k): redact(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact(v) for v in obj]
    return obj
