"""UID validation: only a syntactically valid UID may become part of a path."""

from __future__ import annotations

import re

# PS3.5 9.1: components of digits separated by '.', no leading zeros, at most 64 chars.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def is_valid_uid(value: object) -> bool:
    if not isinstance(value, str):
        return False
    value = value.rstrip("\x00 ")
    return 0 < len(value) <= 64 and _UID.match(value) is not None


def clean_uid(value: object) -> str | None:
    """The UID without trailing padding if it is valid, else ``None``."""
    if value is None:
        return None
    text = str(value).rstrip("\x00 ")
    return text if is_valid_uid(text) else None
