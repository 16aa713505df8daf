"""HL7 v2.5 ORU^R01 over MLLP, optionally inside TLS.

Library: ``hl7apy`` (maintained, MIT) builds the message against the v2.5 structure
definitions (segment groups, field and data-type names) and parses the ACK.  MLLP framing
(``<VT> message <FS><CR>``) is a few lines over a socket, written here so that the whole
exchange has one timeout and the ACK is checked field by field.

Message (one per alert; MSH-10 derived from the alert key, so a receiver de-duplicates a
re-send after a crash):

- MSH: sending application ``AENODE``, facility = node name, MSH-5/6 from configuration;
  MSH-7 = the alert's creation time, so a re-send is byte-for-byte the same message;
- PID: PID-3 patient ID; PID-5 name and PID-7 birth date only when configured;
- OBR: OBR-3 filler order number and OBR-18 placer field 1 = accession number, OBR-4 the
  model, OBR-7 study date/time, OBR-25 result status ``F`` (first alert) or ``C``
  (an update: the category changed); NTE: "not a diagnosis" disclaimer;
- OBX 1 CWE: the category, coded with the model's code and coding scheme;
- OBX 2 NM: its probability (UCUM unit ``1``);
- OBX 3 CWE: previous category (updates only);
- OBX ST: study instance UID (DCM 110180) and the dashboard link.

Transport: plain MLLP over TCP by default (what most interface engines still speak on
the hospital network; ``aenode config check`` warns that it carries the patient ID in
clear), or MLLP inside TLS with ``tls = true``: the receiver's certificate is verified
against ``ca_file`` (or the system CAs) and ``server_name`` (or ``host``); ``cert_file`` /
``key_file`` present a client certificate when the receiver requires one.

For receivers: delivery is at-least-once; a re-send carries the same MSH-10 (the first
20 hex digits of the alert key) and the same message, so de-duplicate on MSH-10.

``AA``/``CA`` in MSA-1 (and MSA-2 echoing MSH-10) is success; ``AE``/``AR``/``CE``/``CR``,
a garbled answer or none within ``timeout_seconds`` raise :class:`AlertSendError`, and
the outbox retries with the same message control ID.
"""

from __future__ import annotations

import datetime as _dt
import socket
import ssl
from typing import Any, ClassVar

from hl7apy.core import Message
from hl7apy.parser import parse_message

from aenode.alert.base import AlertSendError, Channel, hl7_control_id
from aenode.config import AlertChannelConfig, HL7Config

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
LOCAL_SCHEME = "99AENODE"


def escape(text: Any) -> str:
    """HL7 escape of free text for a (sub)component value; CR/LF become spaces."""
    s = "" if text is None else str(text)
    s = s.replace("\\", "\\E\\")
    for char, seq in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        s = s.replace(char, seq)
    return s.replace("\r", " ").replace("\n", " ")


def _ts(iso: str) -> str:
    t = _dt.datetime.fromisoformat(iso).astimezone(_dt.UTC)
    return t.strftime("%Y%m%d%H%M%S+0000")


def _study_ts(study: dict[str, Any]) -> str | None:
    date = study.get("study_date")
    if not date or not str(date).isdigit() or len(date) != 8:
        return None
    t = (study.get("study_time") or "").split(".")[0]
    return date + (t if t.isdigit() and len(t) in (2, 4, 6) else "")


def _set_name(xpn: Any, dicom_pn: str) -> None:
    # DICOM PN family^given^middle^prefix^suffix -> XPN family^given^middle^suffix^prefix
    parts = (dicom_pn.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = parts
    for attr, value in (("xpn_1", family), ("xpn_2", given), ("xpn_3", middle),
                        ("xpn_4", suffix), ("xpn_5", prefix)):
        if value:
            setattr(xpn, attr, escape(value))


def build_oru(payload: dict[str, Any], key: str, cfg: HL7Config | None = None) -> str:
    """The ORU^R01 message as ER7 text (segments separated by CR)."""
    study = payload["study"]
    patient = payload["patient"]
    model = payload["model"]["name"]
    status = "C" if payload.get("update") else "F"

    msg = Message("ORU_R01", version="2.5")
    msh = msg.msh
    msh.msh_3 = "AENODE"
    msh.msh_4 = escape(payload["node"])
    if cfg is not None and cfg.receiving_application:
        msh.msh_5 = escape(cfg.receiving_application)
    if cfg is not None and cfg.receiving_facility:
        msh.msh_6 = escape(cfg.receiving_facility)
    msh.msh_7 = _ts(payload["created"])
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = hl7_control_id(key)
    msh.msh_11 = "P"
    msh.msh_12 = "2.5"
    msh.msh_18 = "UNICODE UTF-8"

    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    pid.pid_1 = "1"
    pid.pid_3.cx_1 = escape(patient.get("id") or "UNKNOWN")
    if patient.get("name"):
        _set_name(pid.pid_5, patient["name"])
    if patient.get("birth_date") and str(patient["birth_date"]).isdigit():
        pid.pid_7 = str(patient["birth_date"])

    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    obr = order.obr
    obr.obr_1 = "1"
    accession = study.get("accession_number")
    if accession:
        obr.obr_3.ei_1 = escape(accession)
        obr.obr_18 = escape(accession)
    obr.obr_4.ce_1 = escape(model)
    obr.obr_4.ce_2 = escape(f"{model} AI analysis")
    obr.obr_4.ce_3 = LOCAL_SCHEME
    when = _study_ts(study)
    if when:
        obr.obr_7 = when
    obr.obr_22 = _ts(payload["created"])
    obr.obr_24 = "CT"
    obr.obr_25 = status
    nte = order.add_segment("NTE")
    nte.nte_1 = "1"
    nte.nte_3 = escape(payload["disclaimer"])

    n = 0

    def obx(value_type: str, code: str, text: str, scheme: str = LOCAL_SCHEME) -> Any:
        nonlocal n
        n += 1
        seg = order.add_group("ORU_R01_OBSERVATION").obx
        seg.obx_1 = str(n)
        seg.obx_2 = value_type
        seg.obx_3.ce_1 = escape(code)
        seg.obx_3.ce_2 = escape(text)
        seg.obx_3.ce_3 = scheme
        seg.obx_11 = status
        return seg

    def coded(seg: Any, name: str, code: dict[str, str] | None) -> None:
        code = code or {}
        value = "^".join((escape(code.get("code_value") or name),
                          escape(code.get("meaning") or name),
                          escape(code.get("scheme_designator") or LOCAL_SCHEME)))
        seg.obx_5 = value

    seg = obx("CWE", f"{model}-category", f"AI category ({model})")
    coded(seg, payload["category"], payload.get("category_code"))
    if payload.get("probability") is not None:
        seg = obx("NM", f"{model}-probability", "Probability of the category")
        seg.obx_5 = f"{payload['probability']:.4f}"
        seg.obx_6 = "1^^UCUM"
    if payload.get("update") and payload.get("previous_category"):
        seg = obx("CWE", f"{model}-previous-category", "Previous AI category (update)")
        coded(seg, payload["previous_category"], payload.get("previous_category_code"))
    seg = obx("ST", "110180", "Study Instance UID", "DCM")
    seg.obx_5 = escape(study["study_instance_uid"])
    seg = obx("ST", "dashboard-link", "Study on the AI node dashboard")
    seg.obx_5 = escape(payload["link"])
    return msg.to_er7()


def frame(message: str) -> bytes:
    return VT + message.encode("utf-8") + FS + CR


def read_frame(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """One MLLP frame's content (raises on EOF before the end block or oversize)."""
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the end of the MLLP frame")
        buf += chunk
        end = buf.find(FS + CR)
        if end >= 0:
            start = buf.find(VT)
            return buf[start + 1 if start >= 0 else 0:end]
        if len(buf) > limit:
            raise ValueError("MLLP frame too large")


def check_ack(raw: bytes, control_id: str) -> str:
    """MSA-1 of a positive ACK for ``control_id``; raises :class:`AlertSendError` otherwise."""
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    try:
        ack = parse_message(text, find_groups=False)
        code = ack.msa.msa_1.to_er7()
        ref = ack.msa.msa_2.to_er7()
    except Exception as exc:  # noqa: BLE001 - any unparsable answer is a failure to retry
        raise AlertSendError(f"hl7: unparsable ACK ({type(exc).__name__})") from None
    if ref != control_id:
        raise AlertSendError(f"hl7: ACK for another message (MSA-2 {ref!r})")
    if code not in ("AA", "CA"):
        raise AlertSendError(f"hl7: receiver answered {code}")
    return code


def tls_context(cfg: HL7Config) -> ssl.SSLContext:
    """The client context for MLLP over TLS: verification on, TLS 1.2 at least."""
    ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.cert_file is not None:
        ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file) if cfg.key_file else None)
    return ctx


def send_hl7(cfg: HL7Config, payload: dict[str, Any], key: str) -> str:
    """Send over MLLP (inside TLS when configured) and wait for the ACK; returns MSA-1."""
    message = build_oru(payload, key, cfg)
    control_id = hl7_control_id(key)
    try:
        ctx = tls_context(cfg) if cfg.tls else None
        with socket.create_connection((cfg.host, cfg.port), timeout=cfg.timeout_seconds) as raw_sock:
            sock = raw_sock
            if ctx is not None:
                sock = ctx.wrap_socket(raw_sock, server_hostname=cfg.server_name or cfg.host)
            try:
                sock.settimeout(cfg.timeout_seconds)
                sock.sendall(frame(message))
                raw = read_frame(sock)
            finally:
                if sock is not raw_sock:
                    sock.close()
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise AlertSendError(f"hl7: {type(exc).__name__}: {exc}") from None
    return check_ack(raw, control_id)


def _own(cfg: AlertChannelConfig) -> HL7Config:
    if not isinstance(cfg, HL7Config):
        raise TypeError(f"hl7 channel got {type(cfg).__name__}")
    return cfg


class HL7Channel(Channel):
    kind: ClassVar[str] = "hl7"
    config_type: ClassVar[type[AlertChannelConfig]] = HL7Config
    key_carrier: ClassVar[str] = "MSH-10 message control ID (first 20 hex digits of the key)"

    def send(self, cfg: AlertChannelConfig, payload: dict[str, Any], key: str) -> None:
        send_hl7(_own(cfg), payload, key)

    def cleartext(self, cfg: AlertChannelConfig) -> str | None:
        if not _own(cfg).tls:
            return "plain MLLP (tls = false): the message is sent unencrypted"
        return None
