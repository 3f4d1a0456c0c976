"""Passwords are argon2id hashes; tokens are stored as digests; logs are redacted."""

from __future__ import annotations

import io
import json
import logging

from microfactory.accounts.security import hash_password, new_token, token_digest, verify_password
from microfactory.logs import JsonFormatter, redact_text


def test_password_hash_is_argon2id_and_verifies() -> None:
    digest = hash_password("correct horse")
    assert digest.startswith("$argon2id$")
    assert "correct horse" not in digest
    assert verify_password(digest, "correct horse")
    assert not verify_password(digest, "wrong horse")


def test_missing_user_never_verifies() -> None:
    assert not verify_password(None, "anything")


def test_tokens_are_random_and_stored_as_digests() -> None:
    a, b = new_token(), new_token()
    assert a != b
    assert a.startswith("mf_")
    assert len(a) > 40
    assert token_digest(a) != a
    assert len(token_digest(a)) == 64


def test_logs_never_carry_secrets() -> None:
    token = new_token()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(
            "login with password=hunter22 and Bearer %s", token, extra={"api_key": "k3y-123456"}
        )
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue()
    assert "hunter22" not in line
    assert token not in line
    assert "k3y-123456" not in line
    record = json.loads(line)
    assert record["api_key"] == "***"
    assert "password=***" in record["msg"]


def test_redact_text_masks_api_keys_in_urls_and_json() -> None:
    assert "SECRETVALUE" not in redact_text('{"api_key": "SECRETVALUE"}')
    assert "SECRETVALUE" not in redact_text("X-Api-Key token=SECRETVALUE")
