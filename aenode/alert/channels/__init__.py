"""The alert channel registry: the one place that lists the channel kinds.

The worker (which channels to decide for), the outbox senders (one kind each), status
and :func:`transport_warnings` all read :data:`REGISTRY`.  The configuration side is
:class:`aenode.config.AlertsConfig`: one field per kind, its type a subclass of
:class:`aenode.config.AlertChannelConfig`.  :func:`check_registry` (run on import, and by
a test) fails loudly when the two lists disagree, so a channel cannot be configured and
never sent, or registered and never configurable.

Adding a channel: write ``aenode/alert/channels/<kind>.py`` with a
:class:`aenode.alert.base.Channel` subclass, add its config model and field to
``AlertsConfig``, and add an instance to ``_CHANNELS`` below.
"""

from __future__ import annotations

from aenode.alert.base import Channel
from aenode.alert.channels.hl7 import HL7Channel
from aenode.alert.channels.smtp import SMTPChannel
from aenode.alert.channels.webhook import WebhookChannel
from aenode.alert.store import DASHBOARD
from aenode.config import AlertChannelConfig, AlertsConfig, Config

_CHANNELS: tuple[Channel, ...] = (WebhookChannel(), SMTPChannel(), HL7Channel())

REGISTRY: dict[str, Channel] = {c.kind: c for c in _CHANNELS}


def check_registry() -> None:
    """Raise if the registry and ``AlertsConfig`` disagree (a programming error)."""
    kinds = AlertsConfig.channel_kinds()
    if sorted(kinds) != sorted(REGISTRY) or len(REGISTRY) != len(_CHANNELS):
        raise RuntimeError(f"alert channels: AlertsConfig has {sorted(kinds)}, the registry {sorted(REGISTRY)}")
    if DASHBOARD in REGISTRY:
        raise RuntimeError(f"alert channels: {DASHBOARD!r} is the built-in dashboard channel")
    for kind, channel in REGISTRY.items():
        field = AlertsConfig.model_fields[kind]
        if channel.config_type not in getattr(field.annotation, "__args__", (field.annotation,)):
            raise RuntimeError(f"alert channels: {kind!r} is configured as {field.annotation},"
                               f" registered with {channel.config_type.__name__}")


check_registry()


def configured_channels(config: Config) -> dict[str, AlertChannelConfig]:
    """The configured channels (kind -> its table), in registry order."""
    configured = config.alerts.channels()
    return {kind: configured[kind] for kind in REGISTRY if kind in configured}


def transport_warnings(config: Config) -> list[str]:
    """One line per configured channel that carries patient identifiers in clear.

    For ``aenode config check``; every alert carries the patient ID and the accession
    number (and the name / birth date when ``include_patient_name`` /
    ``include_birth_date`` are on).
    """
    carried = ["patient ID", "accession number"]
    if config.alerts.include_patient_name:
        carried.append("patient name")
    if config.alerts.include_birth_date:
        carried.append("birth date")
    out = []
    for kind, cfg in configured_channels(config).items():
        reason = REGISTRY[kind].cleartext(cfg)
        if reason:
            out.append(f"alerts.{kind}: {reason}; it carries {', '.join(carried)} in clear")
    return out


__all__ = ["REGISTRY", "Channel", "check_registry", "configured_channels", "transport_warnings"]
