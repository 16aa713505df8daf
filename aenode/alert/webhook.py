"""Webhook channel: HTTP(S) POST of the alert document as JSON.

Client: ``httpx`` (one short-lived client per attempt): one timeout that covers connect,
write and read, and TLS verification against the system CAs or ``ca_file``.  The stdlib's
urllib would do, but its timeouts are per socket operation and its TLS set-up is clumsier.

Headers:

- ``Idempotency-Key``: the alert key (study + result revision + model + channel); a retry
  or a re-send after a crash carries the same key, so the receiver can de-duplicate;
- ``X-Aenode-Signature: sha256=<hex>``: HMAC-SHA256 of the exact body bytes with the
  shared ``secret``, when one is configured (compare with :func:`verify_signature`).

Any 2xx answer is success; anything else (and no answer) is retried by the outbox.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
from typing import Any

import httpx

from aenode.alert.base import AlertSendError
from aenode.config import WebhookConfig

SIGNATURE_HEADER = "X-Aenode-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def body_bytes(payload: dict[str, Any]) -> bytes:
    """Canonical JSON: the same payload gives the same bytes (and signature) on every retry."""
    return json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, secret: str, header_value: str | None) -> bool:
    """For receivers (and tests): constant-time check of the signature header."""
    return header_value is not None and hmac.compare_digest(sign(body, secret), header_value)


def send_webhook(cfg: WebhookConfig, payload: dict[str, Any], key: str, user_agent: str = "aenode") -> int:
    """POST the alert; returns the HTTP status, raises :class:`AlertSendError` if not 2xx."""
    body = body_bytes(payload)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        IDEMPOTENCY_HEADER: key,
        "User-Agent": user_agent,
    }
    if cfg.secret:
        headers[SIGNATURE_HEADER] = sign(body, cfg.secret)
    verify: Any = True
    if cfg.ca_file is not None:
        verify = ssl.create_default_context(cafile=str(cfg.ca_file))
    try:
        with httpx.Client(timeout=cfg.timeout_seconds, verify=verify, follow_redirects=False) as client:
            response = client.post(cfg.url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise AlertSendError(f"webhook: {type(exc).__name__}: {exc}") from None
    if not 200 <= response.status_code < 300:
        raise AlertSendError(f"webhook: HTTP {response.status_code}")
    return response.status_code
