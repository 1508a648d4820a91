"""URL redaction: userinfo and presigned query strings never reach what we write."""

from __future__ import annotations

import pytest

from tasks.core.redact import redact, redact_text, redact_url


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


def test_redact_text_masks_urls_inside_messages():
    message = (
        "ClientError: 403 for https://b.s3.example/x.pt?X-Amz-Signature=ff (and ftp://u:p@h/y)"
    )
    assert redact_text(message) == (
        "ClientError: 403 for https://b.s3.example/x.pt?*** (and ftp://***@h/y)"
    )


def test_an_unreadable_presigned_checkpoint_is_reported_without_its_secrets(tmp_path, caplog):
    """The evaluate stage's error (and any log line) names the checkpoint redacted."""
    from tasks.core.config import PipelineConfig
    from tasks.core.storage import Storage
    from tasks.evaluate.stage import load_model

    secret = "http://alice:hunter2@127.0.0.1:9/ckpt.pt?X-Amz-Signature=deadbeef"  # port 9: closed
    cfg = PipelineConfig.model_validate(
        {"storage": {"root": str(tmp_path)}, "evaluate": {"checkpoint": secret}}
    )
    with pytest.raises(Exception) as raised:
        load_model(cfg, Storage(cfg.storage))
    shown = str(raised.value) + caplog.text
    assert "127.0.0.1:9/ckpt.pt" in shown
    assert "hunter2" not in shown and "deadbeef" not in shown and "alice" not in shown
