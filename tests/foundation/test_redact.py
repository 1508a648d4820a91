"""URL redaction: userinfo and presigned query strings never reach what we write."""

from __future__ import annotations

import pytest

from tasks.core.redact import redact, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@host/x.pt", "https://***@host/x.pt"),
        ("https://token@host:8443/x.pt", "https://***@host:8443/x.pt"),
        ("https://b.s3.amazonaws.com/x.pt?X-Amz-Algorithm=A&X-Amz-Signature=ff",
         "https://b.s3.amazonaws.com/x.pt?***"),
        ("https://acct.blob.core.windows.net/c/x.pt?sv=2020&sig=abc", "https://acct.blob.core.windows.net/c/x.pt?***"),
        ("https://host/x.pt?page=2", "https://host/x.pt?page=2"),
        ("s3://bucket/prefix/latest.pt", "s3://bucket/prefix/latest.pt"),
        ("/local/path/latest.pt", "/local/path/latest.pt"),
        ("not a url", "not a url"),
    ],
)  # fmt: skip
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_redact_walks_json_values():
    value = {"a": ["https://u:p@h/x", 3, None], "https://k:s@h/": {"b": "plain"}}
    assert redact(value) == {"a": ["https://***@h/x", 3, None], "https://***@h/": {"b": "plain"}}
