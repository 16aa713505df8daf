"""Webhook channel: HTTPS POST of the alert document as JSON.

Client: ``httpx`` (one short-lived client per attempt): one timeout that covers connect,
write and read, and TLS verification against the system CAs or ``ca_file``.  The stdlib's
urllib would do, but its timeouts are per socket operation and its TLS set-up is clumsier.

Transport: ``https://`` with the certificate always verified.  An ``http://`` URL is
refused by the configuration unless ``insecure = true`` (the body carries the patient ID
and accession number), and ``aenode config check`` warns about it.

Headers (for receivers):

- ``Idempotency-Key``: the alert key (study + result revision + model + channel).  Delivery
  is at-least-once: a retry, or a re-send after a crash between the receiver's 2xx and
  the node recording it, carries the same key and the same body, so de-duplicate on it;
- ``X-Aenode-Signature: sha256=<hex>``: HMAC-SHA256 of the exact body bytes with the
  shared ``secret``, when one is configured (compare with :func:`verify_signature`).

Any 2xx answer is success; anything else (and no answer) is retried by the outbox.
Redirects are not followed (a redirect could send the body somewhere unverified).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
from typing import Any, ClassVar

import httpx

from aenode.alert.base import AlertSendError, Channel
from aenode.config import AlertChannelConfig, WebhookConfig

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
    if cfg.url.lower().startswith("http://") and not cfg.insecure:
        # The configuration refuses this already; checked again so no code path skips it.
        raise AlertSendError("webhook: http:// URL without insecure = true")
    body = body_bytes(payload)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        IDEMPOTENCY_HEADER: key,
        "User-Agent": user_agent,
    }
    if cfg.secret:
        headers[SIGNATURE_HEADER] = sign(body, cfg.secret)
    verify: ssl.SSLContext | bool = True
    if cfg.ca_file is not None:
        verify = ssl.create_default_context(cafile=str(cfg.ca_file))
    try:
        with httpx.Client(timeout=cfg.timeout_seconds, verify=verify, follow_redirects=False) as client:
            response = client.post(cfg.url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise AlertSendError(f"webhook: {type(exc).__name__}: {exc}") from None
    except (OSError, ssl.SSLError) as exc:  # e.g. an unreadable ca_file
        raise AlertSendError(f"webhook: {type(exc).__name__}: {exc}") from None
    if not 200 <= response.status_code < 300:
        raise AlertSendError(f"webhook: HTTP {response.status_code}")
    return response.status_code


def _own(cfg: AlertChannelConfig) -> WebhookConfig:
    if not isinstance(cfg, WebhookConfig):
        raise TypeError(f"webhook channel got {type(cfg).__name__}")
    return cfg


class WebhookChannel(Channel):
    kind: ClassVar[str] = "webhook"
    config_type: ClassVar[type[AlertChannelConfig]] = WebhookConfig
    key_carrier: ClassVar[str] = "HTTP header Idempotency-Key"

    def send(self, cfg: AlertChannelConfig, payload: dict[str, Any], key: str) -> None:
        send_webhook(_own(cfg), payload, key)

    def cleartext(self, cfg: AlertChannelConfig) -> str | None:
        if _own(cfg).url.lower().startswith("http://"):
            return "url is http:// (insecure = true): the alert is sent unencrypted"
        return None
