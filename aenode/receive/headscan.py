"""A few top-level elements of a received data set, read from its first bytes in memory.

Why by hand: the C-STORE handler must check an instance's UIDs and image geometry before it
answers, so whatever reads the header sits on every instance's critical path.  pydicom's
reader (``dcmread(stop_before_pixels=True)``) walks all of a CT header's ~90 elements
through a generic, file-based loop and took 0.23-0.68 ms per instance on the 2-core test
machine, as long as DCMTK's storescp spends on a whole instance.  This walk needs about
a tenth of that: it steps over the elements in the bytes the association already holds
and keeps the raw value of the ones asked for.

It decides nothing on its own.  The values become pydicom ``RawDataElement``\\ s in a
pydicom ``Dataset``, so that every value is converted exactly as ``dcmread`` would; and
whenever the bytes are anything but plainly well-formed (an unknown VR, a transfer syntax
that the first element contradicts, an undefined length that is not a sequence, nesting
deeper than :data:`MAX_DEPTH`, a header longer than the bytes held, a big endian
transfer syntax), :func:`scan_header` returns None and the caller reads the header with
pydicom as before.  ``tests/receive/test_headscan.py`` checks it against pydicom, on
generated headers and on mutated bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from typing import cast

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

MAX_DEPTH = 8
"""Sequences nested deeper than this are left to pydicom."""

_ENCODED_VR = frozenset(v.encode() for v in VR)
_LONG_VR = frozenset(v.encode() for v in EXPLICIT_VR_LENGTH_32)
_PIXEL_TAGS = frozenset((0x7FE00010, 0x7FE00009, 0x7FE00008))  # where stop_before_pixels stops
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_SPECIFIC_CHARACTER_SET = 0x00080005
# Transfer syntaxes whose data set is little endian and not deflated: implicit VR, or
# explicit VR (every compressed syntax encodes its data set as explicit VR little endian).
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = frozenset(("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.100.1", "1.2.840.10008.1.2.4.101.1",
                       "1.2.840.10008.1.2.4.102.1", "1.2.840.10008.1.2.4.103.1", "1.2.840.10008.1.2.4.104.1",
                       "1.2.840.10008.1.2.4.105.1", "1.2.840.10008.1.2.4.106.1"))
_EXPLICIT_HEAD = struct.Struct("<HH2sH")
_IMPLICIT_HEAD = struct.Struct("<HHI")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")


class _Odd(Exception):
    """Anything but a plainly well-formed header: pydicom decides."""


def scan_header(data: bytes | bytearray | memoryview, transfer_syntax: str, wanted: Collection[int],
                *, complete: bool) -> Dataset | None:
    """The elements of ``wanted`` (tags as ints) found before the pixel data of the data set
    that starts ``data``, as a pydicom Dataset; None when pydicom must read it instead.

    ``complete``: ``data`` is the whole data set (else its first bytes only: running out
    of them before the pixel data gives None)."""
    ts = str(transfer_syntax)
    if ts == _BIG_ENDIAN or ts in _DEFLATED:
        return None
    implicit = ts == ImplicitVRLittleEndian
    view = memoryview(data)
    try:
        found: dict[BaseTag, RawDataElement | DataElement] = {}
        if len(view) >= 6 and _looks_implicit(view, 0) != implicit:
            return None  # pydicom would switch encodings on this data set
        _walk(view, 0, len(view), implicit, frozenset(wanted), found, 0, complete)
    except (_Odd, struct.error):
        return None
    finally:
        view.release()
    ds = Dataset(found)
    encoding: str | list[str] = default_encoding
    if _SPECIFIC_CHARACTER_SET in found:
        charset = found[BaseTag(_SPECIFIC_CHARACTER_SET)]
        assert isinstance(charset, RawDataElement)
        encoding = convert_encodings(convert_raw_data_element(charset).value)
    ds.set_original_encoding(implicit, True, encoding)
    return ds


def _looks_implicit(view: memoryview, pos: int) -> bool:
    """pydicom's test on a data set's first element: no VR of two capitals after its tag."""
    a, b = view[pos + 4], view[pos + 5]
    return not (0x40 < a < 0x5B and 0x40 < b < 0x5B)


def _head(view: memoryview, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, value offset) of the element at ``pos``."""
    if implicit:
        group, element, length = _IMPLICIT_HEAD.unpack_from(view, pos)
        return group << 16 | element, None, length, pos + 8
    group, element, vr, length = _EXPLICIT_HEAD.unpack_from(view, pos)
    tag = group << 16 | element
    if group == 0xFFFE:  # item and delimitation tags carry no VR: tag + 4-byte length
        (length,) = _U32.unpack_from(view, pos + 4)
        return tag, None, length, pos + 8
    if vr not in _ENCODED_VR:
        raise _Odd()
    if vr in _LONG_VR:
        (length,) = _U32.unpack_from(view, pos + 8)
        return tag, vr, length, pos + 12
    return tag, vr, length, pos + 8


def _walk(view: memoryview, pos: int, end: int, implicit: bool, wanted: frozenset[int],
          found: dict[BaseTag, RawDataElement | DataElement] | None, depth: int, complete: bool) -> int:
    """Step over the elements of one data set from ``pos``; the top level (``found`` given)
    stops at the pixel data or at ``end``, a nested one at its item delimiter (returned:
    the offset after it) or exactly at ``end``.  Raises ``_Odd`` on anything unusual."""
    top = found is not None
    while True:
        if pos == end:
            if top and not complete:
                raise _Odd()  # the header goes on past the bytes held
            return pos
        if top and end - pos >= 4:
            group, element = _TAG.unpack_from(view, pos)
            if group << 16 | element in _PIXEL_TAGS:
                return pos
        if end - pos < 8:
            raise _Odd()
        tag, vr, length, value = _head(view, pos, implicit)
        if tag == _ITEM_END:
            if top or length != 0:
                raise _Odd()
            return value
        if tag >> 16 == 0xFFFE:
            raise _Odd()
        if length == _UNDEFINED:
            if found is not None and tag in wanted:
                raise _Odd()
            if not _is_sequence(tag, vr):
                raise _Odd()
            pos = _skip_sequence(view, value, end, implicit, depth + 1)
            continue
        if value + length > end:
            raise _Odd()
        if found is not None and tag in wanted:
            vr_name = None if vr is None else vr.decode()
            raw = bytes(view[value:value + length]) if length else cast(bytes | None, empty_value_for_VR(vr_name, raw=True))
            found[BaseTag(tag)] = RawDataElement(BaseTag(tag), vr_name, length, raw, value, implicit, True)
        pos = value + length


def _is_sequence(tag: int, vr: bytes | None) -> bool:
    if vr is not None:
        return vr == b"SQ"
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _skip_sequence(view: memoryview, pos: int, end: int, implicit: bool, depth: int) -> int:
    """The offset after the sequence delimiter of an undefined-length sequence whose first
    item starts at ``pos``; every item's data set is walked, as pydicom reads them."""
    if depth > MAX_DEPTH:
        raise _Odd()
    while True:
        if end - pos < 8:
            raise _Odd()
        group, element, length = _IMPLICIT_HEAD.unpack_from(view, pos)
        tag = group << 16 | element
        pos += 8
        if tag == _SEQUENCE_END:
            if length != 0:
                raise _Odd()
            return pos
        if tag != _ITEM:
            raise _Odd()
        if length == _UNDEFINED:
            if end - pos >= 6 and _looks_implicit(view, pos) != implicit:
                raise _Odd()
            pos = _walk(view, pos, end, implicit, frozenset(), None, depth, True)
            continue
        if pos + length > end:
            raise _Odd()
        if length and (length < 6 or _looks_implicit(view, pos) != implicit):
            raise _Odd()
        if _walk(view, pos, pos + length, implicit, frozenset(), None, depth, True) != pos + length:
            raise _Odd()
        pos += length


__all__ = ["MAX_DEPTH", "scan_header"]
