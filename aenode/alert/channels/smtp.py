"""E-mail channel over SMTP.

Client: the standard library's :mod:`smtplib` and :mod:`email`.  It covers exactly what
the node needs - plain SMTP, STARTTLS, implicit TLS (SMTPS), AUTH - with no dependency;
apprise would add a large dependency tree for one transport and hide the Message-ID and
TLS context we must control.

- The subject names the node, the category and whether it is an update: **no patient
  data** (subjects show up in notification previews, mail logs and lock screens).
- ``Message-ID`` is derived from the alert key, so a re-send after a crash carries the same
  ID and mail clients / archives can de-duplicate.
- The body is plain text rendered from the alert document.

Transport: STARTTLS by default (``security = "starttls"``; a server that does not offer
it is a failed attempt, never a silent downgrade), or implicit TLS (``"tls"``, SMTPS);
the server certificate is verified against ``ca_file`` or the system CAs.
``security = "none"`` needs ``insecure = true`` (a relay on this machine) and AUTH is
never sent without TLS.

For receivers: delivery is at-least-once; a re-send carries the same ``Message-ID``
(and ``X-Aenode-Alert-Id``), so de-duplicate on it.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import re
import smtplib
import ssl
from email.message import EmailMessage
from typing import Any, ClassVar

from aenode.alert.base import AlertSendError, Channel
from aenode.config import AlertChannelConfig, SMTPConfig
from aenode.logs import get_logger

log = get_logger("aenode.alert")


def _domain(node_name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9.-]+", "-", node_name).strip(".-").lower()
    return cleaned or "aenode"


def message_id(key: str, node_name: str) -> str:
    return f"<alert-{key}@{_domain(node_name)}.aenode>"


def subject(payload: dict[str, Any]) -> str:
    """Category, model and node only - never patient data."""
    model = payload["model"]["name"]
    node = payload["node"]
    if payload.get("cleared"):
        return (f"[aenode {node}] UPDATE: {model} result lowered from "
                f"{payload.get('previous_category')} to {payload['category']}")
    prefix = "UPDATE: " if payload.get("update") else ""
    return f"[aenode {node}] {prefix}Infection-control alert: {payload['category']} ({model})"


def body_text(payload: dict[str, Any]) -> str:
    study = payload["study"]
    patient = payload["patient"]
    prob = payload.get("probability")
    lines = []
    if payload.get("message"):  # e.g. the domain gate's "AI could not assess; needs a radiologist's review"
        lines.append(str(payload["message"]))
    if payload.get("cleared"):
        lines.append(f"UPDATE: the result was revised from {payload.get('previous_category')} "
                     f"to {payload['category']}; it no longer meets the alert criteria.")
    elif payload.get("update"):
        lines.append(f"UPDATE: the result was revised from {payload.get('previous_category')} "
                     f"to {payload['category']}.")
    lines += [
        f"Category:          {payload['category']}",
        f"Probability:       {'' if prob is None else f'{prob:.2f}'}",
        f"Model:             {payload['model']['name']} {payload['model'].get('version') or ''}".rstrip(),
        f"Study date/time:   {study.get('study_datetime') or study.get('study_date') or ''}",
        f"Accession number:  {study.get('accession_number') or ''}",
        f"Patient ID:        {patient.get('id') or ''}",
    ]
    if "name" in patient:
        lines.append(f"Patient name:      {patient.get('name') or ''}")
    if "birth_date" in patient:
        lines.append(f"Birth date:        {patient.get('birth_date') or ''}")
    lines += [
        f"Station:           {study.get('station_name') or ''}",
        f"Institution:       {study.get('institution_name') or ''}",
        f"Node:              {payload['node']}",
        f"Result revision:   {study.get('result_revision')}",
        f"Open the study:    {payload['link']}",
        f"Alert ID:          {payload['alert_id']}",
        "",
        payload["disclaimer"],
        "",
    ]
    return "\n".join(lines)


def build_email(cfg: SMTPConfig, payload: dict[str, Any], key: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(cfg.recipients)
    msg["Subject"] = subject(payload)
    msg["Message-ID"] = message_id(key, payload["node"])
    msg["Date"] = email.utils.format_datetime(_dt.datetime.fromisoformat(payload["created"]))
    msg["X-Aenode-Alert-Id"] = key
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(body_text(payload))
    return msg


def send_email(cfg: SMTPConfig, payload: dict[str, Any], key: str) -> None:
    """Send through the configured server; raises :class:`AlertSendError` on any failure."""
    msg = build_email(cfg, payload, key)
    if cfg.security == "none" and (cfg.username or not cfg.insecure):
        # The configuration refuses these already; checked again so no code path skips it.
        raise AlertSendError("smtp: refusing to send in clear (security = none)")
    try:
        context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cfg.security == "tls":
            server: smtplib.SMTP = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_seconds,
                                                    context=context)
        else:
            server = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_seconds)
        with server:
            server.ehlo()
            if cfg.security == "starttls":
                server.starttls(context=context)
                server.ehlo()
            if cfg.username:
                server.login(cfg.username, cfg.password or "")
            refused = server.send_message(msg, from_addr=cfg.sender, to_addrs=list(cfg.recipients))
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        # SMTP error texts can echo recipients, never the message body.
        raise AlertSendError(f"smtp: {type(exc).__name__}: {_short(exc)}") from None
    if refused:
        # Others got it: retrying would send them a duplicate.  Log and count it as sent.
        log.warning("alert_smtp_recipients_refused", refused=len(refused), accepted=len(cfg.recipients) - len(refused))


def _short(exc: BaseException) -> str:
    return str(exc).replace("\n", " ")[:200]


def _own(cfg: AlertChannelConfig) -> SMTPConfig:
    if not isinstance(cfg, SMTPConfig):
        raise TypeError(f"smtp channel got {type(cfg).__name__}")
    return cfg


class SMTPChannel(Channel):
    kind: ClassVar[str] = "smtp"
    config_type: ClassVar[type[AlertChannelConfig]] = SMTPConfig
    key_carrier: ClassVar[str] = "e-mail header Message-ID <alert-KEY@NODE.aenode> and X-Aenode-Alert-Id"

    def send(self, cfg: AlertChannelConfig, payload: dict[str, Any], key: str) -> None:
        send_email(_own(cfg), payload, key)

    def cleartext(self, cfg: AlertChannelConfig) -> str | None:
        if _own(cfg).security == "none":
            return "security = \"none\" (insecure = true): the e-mail is sent unencrypted"
        return None
