"""The node's one validated configuration.

Everything configurable lives here, so a typo in a TOML file is caught at start-up with
the key's dotted name instead of surfacing later as odd behaviour.  Sources, in order:
``--config FILE``, ``$AENODE_CONFIG``, built-in defaults that run on one machine with no
GPU and no PACS.  The models are frozen: nothing changes configuration at run time.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

CONFIG_ENV = "AENODE_CONFIG"
REPO_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: no backslash

Port = Annotated[int, Field(ge=1, le=65535)]


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "aenode"


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError("must be 1-16 printable characters, no backslash, not all spaces")
    return value.strip()


AETitle = Annotated[str, AfterValidator(_check_ae_title)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSConfig(_Section):
    """Optional TLS for the DICOM listener."""

    cert: Path
    key: Path
    ca: Path | None = None
    verify_client: bool = False
    handshake_timeout_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _ca_needed_for_client_verification(self) -> TLSConfig:
        if self.verify_client and self.ca is None:
            raise ValueError("verify_client = true needs 'ca' (the CA that signs client certificates)")
        return self


class NodeConfig(_Section):
    ae_title: AETitle = "AENODE"
    host: str = "127.0.0.1"
    port: Port = 11112
    data_dir: Path = Field(default_factory=_default_data_dir)
    name: str = "aenode"
    max_associations: int = Field(16, ge=1, le=1024)
    tls: TLSConfig | None = None


KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class LimitsConfig(_Section):
    """Bounds on what one DICOM peer can make the node hold, before and after it is trusted.

    Everything here is enforced by the receive stage before memory, disk, a thread or an
    association slot is committed to a peer; docs/SECURITY.md explains each bound.
    """

    # Largest P-DATA-TF PDU accepted (advertised as our Maximum Length Received).  A larger
    # declared length aborts the association before anything is allocated.
    max_pdu_bytes: int = Field(4 * MiB, ge=16 * KiB, le=64 * MiB)
    # Largest A-ASSOCIATE-RQ (and any other PDU that is not P-DATA) accepted.
    max_associate_request_bytes: int = Field(256 * KiB, ge=4 * KiB, le=16 * MiB)
    # Time from the TCP accept (after TLS) to a complete A-ASSOCIATE-RQ.
    associate_timeout_seconds: float = Field(10.0, gt=0, le=600)
    # Time from the first to the last byte of one PDU.
    pdu_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    # Time from the first to the last PDU of one DIMSE message (e.g. one C-STORE request).
    message_timeout_seconds: float = Field(600.0, gt=0, le=86400)
    # An established association that sends nothing for this long is aborted.
    idle_timeout_seconds: float = Field(60.0, gt=0, le=86400)
    # Connections that have not yet completed their A-ASSOCIATE-RQ; beyond this the oldest
    # such connection is dropped so that a newcomer is served.
    max_pending_connections: int = Field(32, ge=1, le=4096)
    # Open connections (pending and established) from one IP address.
    max_connections_per_peer: int = Field(8, ge=1, le=1024)
    # Largest dataset (as received, encoded) of one C-STORE.
    max_instance_bytes: int = Field(1 * GiB, ge=64 * KiB, le=64 * GiB)
    # Largest image matrix and frame count declared in an instance's header.
    max_rows: int = Field(8192, ge=1, le=65535)
    max_columns: int = Field(8192, ge=1, le=65535)
    max_frames: int = Field(10000, ge=1, le=2**31 - 1)
    # Rows x Columns x Frames x Samples per Pixel x Bits Allocated / 8 of one instance.
    max_decoded_instance_bytes: int = Field(1 * GiB, ge=64 * KiB, le=64 * GiB)


class StabilityConfig(_Section):
    """When a study counts as complete (see the receive/store stages)."""

    quiet_seconds: float = Field(30.0, gt=0)
    # Complete sooner once the sending association was released and none is still
    # sending to the study; 0 disables the shortcut.
    after_release_seconds: float = Field(2.0, ge=0)


class RetentionConfig(_Section):
    """How long received images stay on disk once their study's results are delivered."""

    enabled: bool = True
    # Days after the study's last analysis, once every outbox row of the study is sent.
    keep_days: float = Field(3.0, gt=0)
    interval_seconds: float = Field(600.0, gt=0)   # how often the retention pass runs


class SourceConfig(_Section):
    ae_title: AETitle
    host: str | None = None


class DestinationConfig(_Section):
    name: str = Field(min_length=1)
    ae_title: AETitle
    host: str
    port: Port


Provider = Literal["cuda", "cpu"]
_DEFAULT_PROVIDERS: tuple[Provider, ...] = ("cuda", "cpu")


class ModelConfig(_Section):
    # A folder of model packages (each with model.toml + model.onnx) or one package.
    path: Path = REPO_MODELS_DIR
    providers: list[Provider] = Field(default_factory=lambda: list(_DEFAULT_PROVIDERS))
    device_id: int = Field(0, ge=0)
    enabled: list[str] | None = None  # model names; None = every package found
    # The model whose category `aenode status` puts in its summary columns (every model's
    # result is listed under "results"); the first by name when this one has no result.
    primary: str = "covid-typicality"


WebRole = Literal["viewer", "infection-control", "radiologist"]


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebUser(_Section):
    """A dashboard user; ``password_hash`` from ``aenode web hash-password`` (argon2id)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    role: WebRole
    password_hash: str = Field(pattern=r"^\$argon2(id|i|d)\$")


class WebToken(_Section):
    """An API bearer token (e.g. for Prometheus); only its SHA-256 is configured."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    role: WebRole
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class WebConfig(_Section):
    host: str = "127.0.0.1"
    port: Port = 8400
    enabled: bool = True
    # Signs session cookies; None = generated once and kept in <data_dir>/web/session-secret.
    session_secret: str | None = Field(None, min_length=32)
    session_hours: float = Field(12.0, gt=0, le=24 * 30)
    # Re-issue the SR as a VERIFIED revision when a radiologist confirms the AI category.
    reissue_verified_sr: bool = False
    health_cache_seconds: float = Field(30.0, ge=0)  # C-ECHO results of /healthz are reused this long
    users: list[WebUser] = Field(default_factory=list)
    tokens: list[WebToken] = Field(default_factory=list)

    @model_validator(mode="after")
    def _safe_defaults(self) -> WebConfig:
        names = [u.name for u in self.users] + [t.name for t in self.tokens]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"users/tokens: duplicate name(s) {', '.join(dupes)}")
        if self.enabled and not self.users and not _is_loopback(self.host):
            raise ValueError("users: at least one [[web.users]] entry is required when web.host is not a"
                             " loopback address (or set enabled = false)")
        return self


class WebhookConfig(_Section):
    url: str = Field(pattern=r"^https?://")
    secret: str | None = None
    timeout_seconds: float = Field(10.0, gt=0)
    ca_file: Path | None = None  # CA bundle to verify an https receiver; None = system CAs
    # Alert only for these classes on this channel; None = the model manifest's alert classes.
    categories: list[str] | None = None


class SMTPConfig(_Section):
    host: str
    port: Port = 25
    sender: str
    recipients: list[str] = Field(min_length=1)
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    password: str | None = None
    timeout_seconds: float = Field(30.0, gt=0)
    ca_file: Path | None = None  # CA bundle to verify the server's certificate; None = system CAs
    # Alert only for these classes on this channel; None = the model manifest's alert classes.
    categories: list[str] | None = None


class HL7Config(_Section):
    host: str
    port: Port
    timeout_seconds: float = Field(10.0, gt=0)
    receiving_application: str = ""  # MSH-5
    receiving_facility: str = ""  # MSH-6
    # Alert only for these classes on this channel; None = the model manifest's alert classes.
    categories: list[str] | None = None


class AlertsConfig(_Section):
    webhook: WebhookConfig | None = None
    smtp: SMTPConfig | None = None
    hl7: HL7Config | None = None
    include_patient_name: bool = False
    include_birth_date: bool = False
    # Base of the study link in alerts; None = http://{web.host}:{web.port}
    dashboard_url: str | None = Field(None, pattern=r"^https?://")


class DeliveryConfig(_Section):
    """Durable outbox for everything that leaves the node (C-STORE to PACS, later alerts)."""

    max_attempts: int = Field(8, ge=1, le=1000)  # then the row is 'failed' until 'aenode retry'
    backoff_base_seconds: float = Field(5.0, gt=0)  # delay after attempt n: base * 2**(n-1) ...
    backoff_cap_seconds: float = Field(600.0, gt=0)  # ... but never more than this
    poll_seconds: float = Field(1.0, gt=0)  # how often the worker looks for due rows
    timeout_seconds: float = Field(30.0, gt=0)  # association / DIMSE / network timeout


class Config(_Section):
    node: NodeConfig = Field(default_factory=NodeConfig)
    stability: StabilityConfig = Field(default_factory=StabilityConfig)
    sources: list[SourceConfig] = Field(default_factory=list)  # empty = accept any caller
    destinations: list[DestinationConfig] = Field(default_factory=list)
    model: ModelConfig = Field(default_factory=ModelConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)

    @model_validator(mode="after")
    def _unique_destination_names(self) -> Config:
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destinations: duplicate name(s) {', '.join(dupes)}")
        return self


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator (key: problem)."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validation_problems(exc: ValidationError) -> list[str]:
    """pydantic's errors as ``dotted.key: problem`` lines for operators.

    Used for the configuration and for model manifests, so both name keys the same way.
    A check on a whole section that already names its key ("name: problem") is kept as
    it is, prefixed with the section.
    """
    problems = []
    for err in exc.errors():
        loc = _dotted(err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        head = msg.split(":", 1)[0]
        if ":" in msg and " " not in head and loc == "(top level)":
            problems.append(msg)
        elif ":" in msg and " " not in head:
            problems.append(f"{loc}.{msg}")
        else:
            problems.append(f"{loc}: {msg}")
    return problems


def parse_config(data: dict, source: str = "<defaults>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, validation_problems(exc)) from None


def read_toml(file: Path) -> dict:
    """A TOML file's contents; ValueError says what is wrong in words for the operator.

    Shared by the configuration and model manifests so both report the same way.
    """
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read file: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML: {exc}") from None


def load_config(path: str | Path | None = None) -> Config:
    """Load from ``path``, else ``$AENODE_CONFIG``, else the built-in defaults."""
    chosen = path if path is not None else os.environ.get(CONFIG_ENV) or None
    if chosen is None:
        return Config()
    file = Path(chosen)
    try:
        data = read_toml(file)
    except ValueError as exc:
        raise ConfigError(str(file), [str(exc)]) from None
    return parse_config(data, str(file))


def load_config_or_report(path: str | Path | None) -> Config | None:
    """The configuration for a subcommand, or None after printing what is wrong with it.

    Every subcommand that takes ``--config`` uses this, so operators see one format.
    """
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"configuration error in {exc.source}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def render_toml(config: Config) -> str:
    """The effective configuration as TOML, for ``aenode config check``.

    Secrets are masked; ``None`` values are omitted because TOML has no null.
    """
    data = config.model_dump(mode="json")
    lines: list[str] = []

    def scalar(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def table(name: str, body: dict, array: bool = False) -> None:
        simple = {k: v for k, v in body.items() if v is not None and not isinstance(v, dict)
                  and not (isinstance(v, list) and v and isinstance(v[0], dict))}
        lines.append(f"[[{name}]]" if array else f"[{name}]")
        for k, v in simple.items():
            if k in {"password", "secret", "session_secret", "password_hash", "token_sha256"}:
                v = "********"
            lines.append(f"{k} = {scalar(v)}")
        lines.append("")
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{name}.{k}", v)

    for key, value in data.items():
        if isinstance(value, list):
            for item in value:
                table(key, item, array=True)
            if not value:
                lines.append(f"# {key}: none configured")
                lines.append("")
        elif isinstance(value, dict):
            table(key, value)
    return "\n".join(lines).rstrip() + "\n"
