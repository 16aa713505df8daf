"""Periodic push of the FHIR MeasureReport to ``[surveillance.submit] url`` (outbox sender).

The worker queues one outbox row per report (``kind`` = :data:`SUBMIT_KIND`); this
sender POSTs it as ``application/fhir+json`` with ``httpx`` (one timeout for the whole
exchange, TLS verified against the system CAs or ``ca_file``).  Retries, backoff and the
``failed`` state are the outbox's.  The body holds aggregate counts only.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

import httpx

from aenode.config import Config
from aenode.deliver.errors import DeliveryError
from aenode.deliver.outbox import OutboxRow
from aenode.deliver.senders import register_sender
from aenode.logs import get_logger

log = get_logger("aenode.surveil")

SUBMIT_KIND = "surveillance_fhir"


def send_reports(config: Config, destination: str, rows: Sequence[OutboxRow]) -> dict[int, DeliveryError | None]:
    cfg = config.surveillance.submit
    out: dict[int, DeliveryError | None] = {}
    if cfg is None:
        return {r.id: DeliveryError("[surveillance.submit] is not configured", permanent=True) for r in rows}
    if cfg.url.lower().startswith("http://") and not cfg.insecure:
        return {r.id: DeliveryError("[surveillance.submit] url: http:// needs insecure = true", permanent=True)
                for r in rows}
    verify: ssl.SSLContext | bool = True
    if cfg.ca_file is not None:
        verify = ssl.create_default_context(cafile=str(cfg.ca_file))
    headers = {"Content-Type": "application/fhir+json", "User-Agent": "aenode"}
    if cfg.token:
        headers["Authorization"] = f"Bearer {cfg.token}"
    with httpx.Client(timeout=cfg.timeout_seconds, verify=verify, follow_redirects=False) as client:
        for row in rows:
            try:
                resp = client.post(cfg.url, content=row.payload.encode("utf-8"),
                                   headers={**headers, "Idempotency-Key": row.object_id})
            except httpx.HTTPError as exc:
                out[row.id] = DeliveryError(f"surveillance submit: {type(exc).__name__}")
                continue
            if 200 <= resp.status_code < 300:
                log.info("surveillance_report_sent", status=resp.status_code, report=row.object_id)
                out[row.id] = None
            else:
                out[row.id] = DeliveryError(f"surveillance submit: HTTP {resp.status_code}")
    return out


def register_submit_sender() -> None:
    register_sender(SUBMIT_KIND, send_reports)


register_submit_sender()
