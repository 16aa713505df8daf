"""How the node marks its own output, and how it recognises it when a PACS sends it back.

Every SR and SC the node writes carries:

* SeriesDescription starting with :data:`OUTPUT_DESCRIPTION_PREFIX`;
* Manufacturer :data:`NODE_MANUFACTURER` and SoftwareVersions starting with ``aenode``.

PACS may rewrite descriptions, so either mark alone is enough.  Objects that arrive from
the node's own AE title are its output too.
"""

from __future__ import annotations

OUTPUT_DESCRIPTION_PREFIX = "AI RESULT - NOT FOR DIAGNOSTIC USE"
NODE_MANUFACTURER = "aenode"
SOFTWARE_PREFIX = "aenode"
MARK_KEYWORDS = ("SeriesDescription", "Manufacturer", "SoftwareVersions")
"""The header attributes :func:`is_node_output` reads."""


def _text(ds: object, keyword: str) -> str:
    try:
        value = ds.get(keyword) if hasattr(ds, "get") else getattr(ds, keyword, None)
    except Exception:  # noqa: BLE001 - a malformed header is simply "not ours" on that mark
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def is_node_output(ds_header: object, *, calling_ae: str | None = None, node_ae_title: str | None = None) -> bool:
    """True when ``ds_header`` (a pydicom Dataset or a mapping of keywords) is the node's
    own output, or when it was sent by the node's own AE title (both given).

    Cheap: reads three header attributes, never the pixels.  Ingest/selection call this
    so the node never analyses its own results when a PACS routes them back.
    """
    if calling_ae is not None and node_ae_title is not None and calling_ae.strip() == node_ae_title.strip():
        return True
    if _text(ds_header, "SeriesDescription").upper().startswith(OUTPUT_DESCRIPTION_PREFIX):
        return True
    if (_text(ds_header, "Manufacturer").strip() == NODE_MANUFACTURER
            and _text(ds_header, "SoftwareVersions").strip().lower().startswith(SOFTWARE_PREFIX)):
        return True
    return False
