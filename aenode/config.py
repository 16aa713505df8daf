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
    Discriminator,
    Field,
    Tag,
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
    # Voxels of one series volume, checked before the loader allocates it (40 slices
    # declaring 4096 x 4096 pass the per-instance limits but not this one).
    max_volume_voxels: int = Field(1000 * 768 * 768, ge=1_000_000, le=2**34)


class StabilityConfig(_Section):
    """When a study counts as complete (see the receive/store stages)."""

    quiet_seconds: float = Field(30.0, gt=0)
    # Complete sooner once the sending association was released and none is still
    # sending to the study; 0 disables the shortcut.
    after_release_seconds: float = Field(2.0, ge=0)


class WorkersConfig(_Section):
    """How ``aenode serve`` spreads the work over processes."""

    # Analysis processes (selection, decoding, preprocessing, models); None = a share of
    # the cores the node may run on (taskset / cpuset respected) that leaves room for
    # receiving and delivering (see aenode/node.py).
    analysis: int | None = Field(None, ge=1, le=256)
    # Threads each analysis process may use for its numeric libraries; None = cores / analysis.
    threads_per_analysis: int | None = Field(None, ge=1, le=256)
    # Receive processes listening on the one DICOM port (SO_REUSEPORT: the kernel spreads
    # associations over them; one Python process is one GIL).  1 on small machines.
    receive: int = Field(1, ge=1, le=64)


class RetentionConfig(_Section):
    """How long received images stay on disk once their study's results are delivered."""

    enabled: bool = True
    # Days after the study's last analysis, once every outbox row of the study is sent.
    keep_days: float = Field(3.0, gt=0)
    interval_seconds: float = Field(600.0, gt=0)   # how often the retention pass runs


class SourceConfig(_Section):
    ae_title: AETitle
    host: str | None = None


class DicomTLSConfig(_Section):
    """TLS for C-STORE/C-ECHO to a PACS (DICOM TLS, PS3.15 B.1).  Verification of the
    PACS certificate is on unless ``verify = false`` (then only encryption remains)."""

    ca_file: Path | None = None  # CA bundle that signs the PACS certificate; None = system CAs
    cert_file: Path | None = None  # client certificate, for a PACS that wants one
    key_file: Path | None = None
    verify: bool = True
    server_name: str | None = None  # name in the PACS certificate; None = ``host``

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> DicomTLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file: give both (client certificate) or neither")
        return self


class DicomDestination(_Section):
    """A PACS reached by C-STORE (DICOM upper layer), optionally over TLS."""

    type: Literal["dicom"] = "dicom"
    name: str = Field(min_length=1)
    ae_title: AETitle
    host: str
    port: Port
    tls: DicomTLSConfig | None = None


class DicomWebDestination(_Section):
    """A PACS reached by DICOMweb STOW-RS (``POST {url}/studies``)."""

    type: Literal["dicomweb"]
    name: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://[^/\s]+")
    token: str | None = Field(None, min_length=1)  # bearer token
    username: str | None = Field(None, min_length=1)  # basic auth, with password
    password: str | None = None
    ca_file: Path | None = None  # CA bundle to verify the server; None = system CAs
    insecure: bool = False  # allow http:// (results carry patient data in clear)

    @model_validator(mode="after")
    def _auth_and_transport(self) -> DicomWebDestination:
        if self.token is not None and self.username is not None:
            raise ValueError("token and username: choose bearer token or basic auth, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password: basic auth needs both")
        if self.url.lower().startswith("http://") and not self.insecure:
            raise ValueError("url: http:// sends patient data in clear; use https:// or set insecure = true")
        return self


def _destination_type(value: object) -> str:
    """``type`` of a ``[[destinations]]`` entry; absent means "dicom" (the first wave's keys)."""
    if isinstance(value, dict):
        return str(value.get("type", "dicom"))
    return str(getattr(value, "type", "dicom"))


# One entry of ``[[destinations]]``.  A new destination type adds its model here (and one
# module under aenode/deliver/destinations/ registering its sender and probe).
DestinationConfig = Annotated[
    Annotated[DicomDestination, Tag("dicom")] | Annotated[DicomWebDestination, Tag("dicomweb")],
    Discriminator(_destination_type),
]
DESTINATION_TYPES: tuple[str, ...] = ("dicom", "dicomweb")


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


ModelMode = Literal["active", "shadow", "off"]
# A model name as in model.toml, or NAME@VERSION: one installed version that is not the
# active one, run beside it (its results are recorded under "NAME@VERSION").
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(@[A-Za-z0-9][A-Za-z0-9_.+-]{0,63})?$")


class ModelSettings(_Section):
    """``[models.NAME]``: how the node runs one model (by its manifest name).

    ``shadow`` analyses every study and records the result (shown to admins beside the
    active model's and the radiologists'), but sends nothing to PACS and raises no alert:
    the way to watch a new model on this hospital's patients before trusting it.
    """

    mode: ModelMode = "active"


def _check_models(value: dict[str, ModelSettings]) -> dict[str, ModelSettings]:
    bad = sorted(k for k in value if not _MODEL_NAME.match(k))
    if bad:
        raise ValueError(f"not a model name (NAME or NAME@VERSION): {', '.join(repr(b) for b in bad)}")
    active_versions = sorted(k for k, v in value.items() if "@" in k and v.mode == "active")
    if active_versions:
        raise ValueError(f"{', '.join(active_versions)}: a NAME@VERSION table can only be \"shadow\" or \"off\";"
                         " make a version active with: aenode models promote NAME@VERSION")
    return value


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
    # Session cookies carry the Secure flag when the request came over TLS (directly or via a
    # trusted proxy) or the dashboard is public (non-loopback host); true/false forces it.
    secure_cookies: bool | None = None
    # Password verifications (argon2, 64 MiB each) running at once / waiting; more -> HTTP 429.
    login_concurrency: int = Field(1, ge=1, le=8)
    login_queue: int = Field(8, ge=0, le=1000)
    # Failed logins: an account's attempts are delayed at most this long (exponential back-off),
    # an address that keeps failing is blocked at most this long.
    login_max_delay_seconds: float = Field(30.0, gt=0, le=3600)
    login_max_block_seconds: float = Field(3600.0, gt=0, le=7 * 86400)
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


class AlertChannelConfig(_Section):
    """What every alert channel's table has.  Each channel is one field of
    :class:`AlertsConfig` (the table name is the channel's kind, e.g. ``[alerts.webhook]``)
    and one module in ``aenode/alert/channels/`` that registers the same kind."""

    # Alert only for these classes on this channel; None = the model manifest's alert classes.
    categories: list[str] | None = None
    timeout_seconds: float = Field(10.0, gt=0)


class WebhookConfig(AlertChannelConfig):
    url: str = Field(pattern=r"^https?://")
    secret: str | None = None
    ca_file: Path | None = None  # CA bundle to verify an https receiver; None = system CAs
    # An http:// URL sends patient identifiers in clear: refused unless set (loopback tests).
    insecure: bool = False

    @model_validator(mode="after")
    def _https_unless_insecure(self) -> WebhookConfig:
        if self.url.lower().startswith("http://") and not self.insecure:
            raise ValueError("url: http:// sends patient identifiers in clear; use https:// (or set"
                             " insecure = true for a receiver on this machine)")
        return self


class SMTPConfig(AlertChannelConfig):
    host: str
    port: Port = 25
    sender: str
    recipients: list[str] = Field(min_length=1)
    # "starttls" (upgrade on the submission/relay port) or "tls" (implicit TLS, SMTPS, 465);
    # "none" is cleartext and needs insecure = true (a relay on this machine).
    security: Literal["none", "starttls", "tls"] = "starttls"
    insecure: bool = False
    username: str | None = None
    password: str | None = None
    timeout_seconds: float = Field(30.0, gt=0)
    ca_file: Path | None = None  # CA bundle to verify the server's certificate; None = system CAs

    @model_validator(mode="after")
    def _tls_unless_insecure(self) -> SMTPConfig:
        if self.security == "none" and self.username is not None:
            raise ValueError("username: AUTH is never sent in clear; use security = \"starttls\" or \"tls\"")
        if self.security == "none" and not self.insecure:
            raise ValueError("security: \"none\" sends patient identifiers in clear; use \"starttls\" or"
                             " \"tls\" (or set insecure = true for a relay on this machine)")
        if (self.username is None) != (self.password is None):
            raise ValueError("username: username and password go together")
        return self


class HL7Config(AlertChannelConfig):
    host: str
    port: Port
    receiving_application: str = ""  # MSH-5
    receiving_facility: str = ""  # MSH-6
    # MLLP inside TLS (the receiver's certificate verified against ca_file or the system
    # CAs; cert_file/key_file present a client certificate when the receiver asks).
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None  # name to verify in the certificate; None = host

    @model_validator(mode="after")
    def _tls_files_need_tls(self) -> HL7Config:
        if not self.tls and any(f is not None for f in (self.ca_file, self.cert_file, self.key_file)):
            raise ValueError("tls: ca_file/cert_file/key_file are set but tls = false")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file: needs cert_file")
        return self


class AlertsConfig(_Section):
    # One field per alert channel kind (an AlertChannelConfig); aenode/alert/channels/
    # registers the sender of each and a test checks that the two lists agree.
    webhook: WebhookConfig | None = None
    smtp: SMTPConfig | None = None
    hl7: HL7Config | None = None
    include_patient_name: bool = False
    include_birth_date: bool = False
    # Base of the study link in alerts; None = http://{web.host}:{web.port}
    dashboard_url: str | None = Field(None, pattern=r"^https?://")

    @classmethod
    def channel_kinds(cls) -> list[str]:
        """The channel kinds this configuration knows, in declaration order."""
        return [name for name, field in cls.model_fields.items()
                if any(isinstance(t, type) and issubclass(t, AlertChannelConfig)
                       for t in getattr(field.annotation, "__args__", (field.annotation,)))]

    def channels(self) -> dict[str, AlertChannelConfig]:
        """The configured channels: kind -> its table."""
        out: dict[str, AlertChannelConfig] = {}
        for kind in self.channel_kinds():
            cfg = getattr(self, kind)
            if cfg is not None:
                out[kind] = cfg
        return out


class DeliveryConfig(_Section):
    """Durable outbox for everything that leaves the node (C-STORE to PACS, later alerts)."""

    max_attempts: int = Field(8, ge=1, le=1000)  # then the row is 'failed' until 'aenode retry'
    backoff_base_seconds: float = Field(5.0, gt=0)  # delay after attempt n: base * 2**(n-1) ...
    backoff_cap_seconds: float = Field(600.0, gt=0)  # ... but never more than this
    poll_seconds: float = Field(1.0, gt=0)  # how often the worker looks for due rows
    timeout_seconds: float = Field(30.0, gt=0)  # association / DIMSE / network / HTTP timeout


def _check_database_url(value: str | None) -> str | None:
    if value is None:
        return None
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in ("postgresql", "postgres"):
        raise ValueError("must start with postgresql:// (or postgres://); leave it out for the embedded SQLite")
    return value


class DatabaseConfig(_Section):
    """Where the stores keep their tables: absent ``url`` = embedded SQLite files under
    ``data_dir`` (one machine); ``postgresql://user:password@host/db`` = one shared
    PostgreSQL for several nodes (each store in its own schema, ``aenode_<store>``)."""

    url: Annotated[str | None, AfterValidator(_check_database_url)] = None
    # How long a node's claim on a study lasts without renewal (the analysis renews it
    # every third of this while it works); a node that died loses its studies after it.
    lease_seconds: float = Field(60.0, gt=0)


class SiteConfig(_Section):
    """Where this node stands, for surveillance records and reports (no patient data)."""

    name: str = Field("", max_length=128)
    postal_code: str = Field("", pattern=r"^[0-9A-Za-z -]{0,12}$")
    prefecture: str = Field("", max_length=64)


class SurveillanceSubmitConfig(_Section):
    """Periodic push of the FHIR MeasureReport to a public-health endpoint (HTTPS)."""

    url: str = Field(pattern=r"^https?://[^/\s]+")
    interval_hours: float = Field(24.0, gt=0)
    period_days: int = Field(7, ge=1, le=366)  # each report covers the last N days
    token: str | None = Field(None, min_length=1)  # bearer token
    ca_file: Path | None = None
    insecure: bool = False  # allow http:// (the report is aggregate counts only)
    timeout_seconds: float = Field(30.0, gt=0)


SignalChannel = Literal["webhook"]
_SIGNAL_CHANNELS: tuple[SignalChannel, ...] = ("webhook",)


class SurveillanceConfig(_Section):
    """Surveillance records, trends and surge signals (aenode/surveil)."""

    enabled: bool = True
    model: str | None = None  # the classifier whose results make the records; None = [model] primary
    surge_categories: list[str] = Field(default_factory=lambda: ["typical", "indeterminate"])
    method: Literal["C1", "C2", "C3"] = "C2"  # EARS method that raises a signal (all three are computed)
    min_count: int = Field(1, ge=0)  # a week with fewer cases never signals
    # Channels that carry surge signals (aggregate JSON); SMTP and HL7 render patient alerts
    # only, so the webhook is the one channel for now.
    alert_channels: list[SignalChannel] = Field(default_factory=lambda: list(_SIGNAL_CHANNELS))
    submit: SurveillanceSubmitConfig | None = None


class BackfillConfig(_Section):
    """``aenode backfill``: retrieve past studies from a PACS (C-FIND + C-MOVE)."""

    source: str | None = None  # a [[destinations]] name (type dicom) that answers C-FIND / C-MOVE
    max_per_hour: int = Field(120, ge=1, le=100000)
    send_results: bool = False  # write SR/SC of backfilled studies to PACS
    move_timeout_seconds: float = Field(600.0, gt=0)


class Config(_Section):
    node: NodeConfig = Field(default_factory=NodeConfig)
    stability: StabilityConfig = Field(default_factory=StabilityConfig)
    sources: list[SourceConfig] = Field(default_factory=list)  # empty = accept any caller
    destinations: list[DestinationConfig] = Field(default_factory=list)
    model: ModelConfig = Field(default_factory=ModelConfig)
    models: Annotated[dict[str, ModelSettings], AfterValidator(_check_models)] = Field(default_factory=dict)
    web: WebConfig = Field(default_factory=WebConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    site: SiteConfig = Field(default_factory=SiteConfig)
    surveillance: SurveillanceConfig = Field(default_factory=SurveillanceConfig)
    backfill: BackfillConfig = Field(default_factory=BackfillConfig)

    def model_mode(self, name: str) -> ModelMode:
        """``[models.NAME] mode``; a model without a table runs active."""
        settings = self.models.get(name)
        return settings.mode if settings else "active"

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
    previous: int | str | None = None
    for part in loc:
        if isinstance(previous, int) and part in DESTINATION_TYPES:
            previous = part
            continue  # the tag pydantic adds for a discriminated union is not a TOML key
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        previous = part
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


def mask_database_url(url: str) -> str:
    """``scheme://user:********@host/...``: the database password never reaches the output."""
    head, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    if not at or ":" not in auth:
        return url
    return f"{head}{sep}{auth.split(':', 1)[0]}:********@{host}"


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

    def toml_key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else '"' + k.replace('"', '\\"') + '"'

    def table(name: str, body: dict, array: bool = False) -> None:
        simple = {k: v for k, v in body.items() if v is not None and not isinstance(v, dict)
                  and not (isinstance(v, list) and v and isinstance(v[0], dict))}
        lines.append(f"[[{name}]]" if array else f"[{name}]")
        for k, v in simple.items():
            if k in {"password", "secret", "session_secret", "password_hash", "token_sha256", "token"}:
                v = "********"
            elif name == "database" and k == "url":
                v = mask_database_url(str(v))
            lines.append(f"{k} = {scalar(v)}")
        lines.append("")
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{name}.{toml_key(k)}", v)

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
