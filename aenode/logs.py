"""Structured logging that cannot leak patient data.

structlog renders JSON lines when stderr is not a terminal (for log shippers) and a
readable console format when it is.  The last processor before rendering is
:func:`scrub_phi`: a log line must never carry patient identifiers, even when they sneak
in through an exception message or a pydicom dataset's ``repr``.  Three defences:

1. keys that name a patient attribute are redacted whatever their value;
2. values registered with :func:`phi_values` (the identifiers of the dataset being
   handled right now) are replaced wherever they appear in any string, tracebacks too;
3. pydicom element dumps of the Patient module and accession number are masked by pattern.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import structlog

REDACTED = "[REDACTED]"

# DICOM keywords (and their snake_case spellings) that identify a patient or an order.
PHI_KEYWORDS: frozenset[str] = frozenset(
    {
        "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex",
        "PatientAge", "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
        "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "IssuerOfPatientID",
        "AccessionNumber", "ReferringPhysicianName", "PerformingPhysicianName",
        "OperatorsName", "RequestingPhysician", "InstitutionAddress", "MedicalRecordLocator",
        "EthnicGroup", "PatientComments", "AdmissionID", "StudyID", "MilitaryRank",
        "PatientInsurancePlanCodeSequence", "ResponsiblePerson", "PersonName",
    }
)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


_PHI_KEYS: frozenset[str] = frozenset(
    {k.lower() for k in PHI_KEYWORDS} | {_snake(k) for k in PHI_KEYWORDS}
    | {"patient_name", "patient_id", "birth_date", "accession", "mrn"}
)

# pydicom's str(dataset): "(0010,0010) Patient's Name   PN: 'DOE^JANE'" and
# "(0008,0050) Accession Number   SH: 'A123'".  Group 0010 is the whole Patient module.
_DUMP_LINE = re.compile(
    r"(\((?:0010,[0-9A-Fa-f]{4}|0008,0050|0008,0090|0008,1050|0008,1070|0032,1032)\)[^:\n]*:\s*)([^\n]*)"
)
# repr of a pydicom DataElement or "PatientName='X'" style keyword=value fragments.
_KEYWORD_VALUE = re.compile(
    r"\b(" + "|".join(sorted(PHI_KEYWORDS, key=len, reverse=True)) + r")(\s*[=:]\s*)('[^']*'|\"[^\"]*\"|[^\s,;)]+)"
)

_current_phi: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("aenode_phi", default=())


def _variants(value: str) -> set[str]:
    """A PN like ``DOE^JANE`` is also printed as ``DOE JANE`` or ``Jane Doe``."""
    value = value.strip()
    out = {value}
    if "^" in value:
        parts = [p for p in value.split("^") if p]
        out.add(" ".join(parts))
        out.update(p for p in parts if len(p) >= 3)
        if len(parts) >= 2:
            out.add(f"{parts[1]} {parts[0]}")
    return {v for v in out if len(v) >= 3}


@contextlib.contextmanager
def phi_values(values: Iterable[object]) -> Iterator[None]:
    """Register identifiers of the object being handled so that no log line repeats them.

    Use around the handling of one dataset: ``with phi_values(identifiers_of(ds)): ...``.
    """
    found: set[str] = set(_current_phi.get())
    for v in values:
        if v is None:
            continue
        text = str(v)
        if text.strip():
            found |= _variants(text)
    token = _current_phi.set(tuple(sorted(found, key=len, reverse=True)))
    try:
        yield
    finally:
        _current_phi.reset(token)


def identifiers_of(ds: Any) -> list[str]:
    """The PHI values of a pydicom Dataset (read from the header, pixels untouched)."""
    from pydicom.multival import MultiValue
    from pydicom.sequence import Sequence

    out: list[str] = []
    for kw in PHI_KEYWORDS:
        try:
            value = ds.get(kw)
        except Exception:  # noqa: BLE001 - a malformed element must not break logging
            continue
        if value is None or isinstance(value, Sequence):
            continue
        values = value if isinstance(value, MultiValue) else [value]
        out.extend(str(v) for v in values)
    return out


def scrub_text(text: str, extra: Iterable[str] = ()) -> str:
    """Mask patient data in free text (exception messages, dataset dumps)."""
    text = _DUMP_LINE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _KEYWORD_VALUE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    for value in (*_current_phi.get(), *extra):
        if value and value in text:
            text = text.replace(value, REDACTED)
    return text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {k: (REDACTED if str(k).lower() in _PHI_KEYS else _scrub_value(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return type(value)(_scrub_value(v) for v in value) if not isinstance(value, set) else [
            _scrub_value(v) for v in value
        ]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return scrub_text(str(value))


def scrub_phi(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: runs after exceptions are formatted, before rendering."""
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        # Render the traceback here so that the scrubber sees its text.
        event_dict = dict(structlog.processors.format_exc_info(_logger, _method, {**event_dict, "exc_info": exc_info}))
    clean: dict[str, Any] = {}
    for key, value in event_dict.items():
        clean[key] = REDACTED if key.lower() in _PHI_KEYS else _scrub_value(value)
    return clean


def configure_logging(level: str = "INFO", *, json: bool | None = None, stream: Any = None) -> None:
    """Set up structlog (and route stdlib logging, e.g. pynetdicom's, through it)."""
    stream = stream or sys.stderr
    if json is None:
        json = not (hasattr(stream, "isatty") and stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        scrub_phi,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        # One write() per line (PrintLogger writes line and newline separately), so lines of
        # aenode serve's processes sharing one stderr never interleave mid-line.
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Third-party libraries log through the stdlib: format them with the same chain.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared[:-1]],
        )
    )
    handler.addFilter(_ScrubStdlib())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # Their INFO lines are prose, not event names, and httpx's carries the full request URL
    # (a webhook's secret token may be in it).
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


class _ScrubStdlib(logging.Filter):
    """Scrub stdlib records (pynetdicom can log dataset dumps at debug level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001
            message = str(record.msg)
        record.msg = scrub_text(message)
        record.args = ()
        if record.exc_info:
            import traceback

            record.msg += "\n" + scrub_text("".join(traceback.format_exception(*record.exc_info)))
            record.exc_info = None
            record.exc_text = None
        return True


def get_logger(name: str | None = None, **bound: Any) -> Any:
    return structlog.get_logger(name).bind(**bound) if bound else structlog.get_logger(name)
