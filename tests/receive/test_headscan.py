"""The C-STORE handler's header walk (aenode/receive/headscan.py) against pydicom.

Whatever it returns must be what ``dcmread(stop_before_pixels=True)`` reads from the same
bytes; when it cannot be sure it must return None (pydicom then decides)."""

from __future__ import annotations

import dataclasses
import io

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from aenode.receive import scp as scp_module
from aenode.receive.headscan import MAX_DEPTH, scan_header
from aenode.receive.scp import HANDLER_TAGS
from aenode.store.meta import meta_from_dataset, read_meta

from .dicomgen import ct_slice

KEYWORDS = [pydicom.datadict.keyword_for_tag(t) for t in sorted(HANDLER_TAGS)]


def _encode(ds: Dataset, implicit: bool) -> bytes:
    out = pydicom.filebase.DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, implicit
    write_dataset(out, ds)
    return out.getvalue()


def _reference(data: bytes, implicit: bool) -> Dataset:
    """pydicom's reading of the same data set, as the handler's fallback does it."""
    return pydicom.filereader.read_dataset(io.BytesIO(data), implicit, True,
                                           stop_when=lambda tag, vr, length: tag in (0x7FE00010, 0x7FE00009,
                                                                                     0x7FE00008))


def _values(ds: Dataset) -> dict[str, object]:
    out: dict[str, object] = {}
    for kw in KEYWORDS:
        try:
            out[kw] = repr(ds.get(kw))
        except Exception as exc:  # noqa: BLE001 - both readers must fail alike
            out[kw] = f"raised {type(exc).__name__}"
    return out


def _ts(implicit: bool) -> str:
    return str(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)


# ---- generated headers ---------------------------------------------------------------

_text = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ^-", max_size=30)


@st.composite
def _item(draw, depth: int) -> Dataset:
    item = Dataset()
    item.CodeValue = draw(_text.filter(lambda s: 0 < len(s.strip()) <= 16))
    item.CodeMeaning = draw(_text)
    if depth < 3 and draw(st.booleans()):
        item.ConceptCodeSequence = draw(_sequence(depth + 1))
    return item


@st.composite
def _sequence(draw, depth: int = 0) -> Sequence:
    items = draw(st.lists(_item(depth), max_size=3))
    seq = Sequence(items)
    for it in seq:
        it.is_undefined_length_sequence_item = draw(st.booleans())
    return seq


@st.composite
def _header(draw) -> tuple[Dataset, bool]:
    ds = Dataset()
    if draw(st.booleans()):
        ds.SpecificCharacterSet = draw(st.sampled_from(["ISO_IR 100", "ISO_IR 192", ""]))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    if draw(st.booleans()):
        ds.Manufacturer = draw(_text)
    if draw(st.booleans()):
        ds.SeriesDescription = draw(_text)
    if draw(st.booleans()):
        ds.SoftwareVersions = draw(_text)
    if draw(st.booleans()):
        ds.ProcedureCodeSequence = draw(_sequence())
        ds["ProcedureCodeSequence"].is_undefined_length = draw(st.booleans())
    if draw(st.booleans()):
        ds.ReferencedImageSequence = draw(_sequence())
        ds["ReferencedImageSequence"].is_undefined_length = draw(st.booleans())
    if draw(st.booleans()):
        ds.add_new(0x00091010, "LO", draw(_text))  # a private element
    if draw(st.booleans()):
        ds.Rows = draw(st.integers(0, 65535))
        ds.Columns = draw(st.integers(0, 65535))
        ds.SamplesPerPixel = draw(st.integers(0, 65535))
        ds.BitsAllocated = draw(st.sampled_from([1, 8, 12, 16, 32]))
    if draw(st.booleans()):
        ds.NumberOfFrames = str(draw(st.integers(0, 10_000)))
    if draw(st.booleans()):
        ds.add_new(0x7FE00010, "OW", b"\0\1" * 8)
    return ds, draw(st.booleans())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_header())
def test_generated_headers_read_as_pydicom_reads_them(case):
    ds, implicit = case
    data = _encode(ds, implicit)
    got = scan_header(data, _ts(implicit), HANDLER_TAGS, complete=True)
    assert got is not None  # well-formed: no need for pydicom
    assert _values(got) == _values(_reference(data, implicit))


def test_head_cut_before_the_pixel_data_is_left_to_pydicom():
    ds = ct_slice(generate_uid(), generate_uid(), 0, size=16)
    data = _encode(ds, implicit=False)
    pixel_at = data.index(b"\xe0\x7f\x10\x00")
    assert scan_header(data[:pixel_at], _ts(False), HANDLER_TAGS, complete=False) is None
    assert scan_header(data[:pixel_at - 3], _ts(False), HANDLER_TAGS, complete=False) is None
    assert scan_header(data[:pixel_at + 4], _ts(False), HANDLER_TAGS, complete=False) is not None  # its tag
    assert scan_header(data[:pixel_at], _ts(False), HANDLER_TAGS, complete=True) is not None


def test_unusual_encodings_are_left_to_pydicom():
    ds = ct_slice(generate_uid(), generate_uid(), 0, size=16)
    explicit, implicit = _encode(ds, implicit=False), _encode(ds, implicit=True)
    assert scan_header(explicit, _ts(True), HANDLER_TAGS, complete=True) is None   # says implicit, is explicit
    assert scan_header(implicit, _ts(False), HANDLER_TAGS, complete=True) is None  # the reverse
    assert scan_header(explicit, "1.2.840.10008.1.2.2", HANDLER_TAGS, complete=True) is None  # big endian
    assert scan_header(explicit, "1.2.840.10008.1.2.1.99", HANDLER_TAGS, complete=True) is None  # deflated
    bad_vr = bytearray(explicit)
    at = explicit.index(b"UI")
    bad_vr[at:at + 2] = b"QQ"  # an unknown VR
    assert scan_header(bytes(bad_vr), _ts(False), HANDLER_TAGS, complete=True) is None


def test_nesting_beyond_the_limit_is_left_to_pydicom():
    ds = ct_slice(generate_uid(), generate_uid(), 0, size=16)
    inner = Dataset()
    inner.CodeValue = "X"
    for _ in range(MAX_DEPTH + 1):
        outer = Dataset()
        outer.ConceptCodeSequence = Sequence([inner])
        outer["ConceptCodeSequence"].is_undefined_length = True
        inner = outer
    ds.ProcedureCodeSequence = Sequence([inner])
    ds["ProcedureCodeSequence"].is_undefined_length = True
    data = _encode(ds, implicit=False)
    assert scan_header(data, _ts(False), HANDLER_TAGS, complete=True) is None
    ds["ProcedureCodeSequence"].is_undefined_length = False  # defined length: stepped over whole
    data = _encode(ds, implicit=False)
    assert _values(scan_header(data, _ts(False), HANDLER_TAGS, complete=True)) == _values(_reference(data, False))


def _mutable(implicit: bool) -> bytes:
    ds = ct_slice("1.2.3.4", "1.2.3.4.5", 0, size=16)
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.ProcedureCodeSequence = Sequence([Dataset()])
    ds.ProcedureCodeSequence[0].CodeValue = "ABC"
    ds["ProcedureCodeSequence"].is_undefined_length = True
    return _encode(ds, implicit)


_MUTABLE = {implicit: _mutable(implicit) for implicit in (False, True)}


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_headers_agree_with_pydicom_or_are_left_to_it(data):
    implicit = data.draw(st.booleans())
    raw = bytearray(_MUTABLE[implicit])
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    got = scan_header(bytes(raw), _ts(implicit), HANDLER_TAGS, complete=True)
    if got is None:
        return  # pydicom decides
    assert _values(got) == _values(_reference(bytes(raw), implicit))


def test_the_handler_accepts_a_well_formed_instance_without_pydicom(monkeypatch, tmp_path):
    """The fast path is the one taken: with pydicom's header reader broken, a plain CT slice
    is still stored (sealed in the journal), and a refused one goes through pydicom (which
    decides and logs)."""
    from aenode.config import parse_config
    from aenode.receive.spoolfile import JournalEntry, part10_header
    from aenode.store.index import Index
    from aenode.store.spool import Spool
    from aenode.store.stabilise import ActivityTracker

    config = parse_config({"node": {"data_dir": str(tmp_path)}})
    spool = Spool(tmp_path)
    spool.prepare()
    store = scp_module.StorageSCP(config, Index.for_data_dir(tmp_path), spool, ActivityTracker())
    calls: list[object] = []

    def broken(fh):
        calls.append(fh)
        raise scp_module.BadInstance("pydicom not wanted here")

    monkeypatch.setattr(scp_module, "read_dataset", broken)

    store.journal.open()

    def send(ds: Dataset) -> int:
        seg = store.journal.take()
        entry = seg.entry = JournalEntry(seg, config.limits.max_instance_bytes)
        entry.begin(part10_header(ds.SOPClassUID, ds.SOPInstanceUID, _ts(False), "T"))
        entry.write(_encode(ds, implicit=False))
        try:
            return store.store(entry, command_sop_uid=ds.SOPInstanceUID, command_sop_class=ds.SOPClassUID,
                               abstract_syntax=ds.SOPClassUID, transfer_syntax=_ts(False), calling_ae="T",
                               sender=object())
        finally:
            entry.finish()
            store.journal.give_back(seg, 0.0)

    good = ct_slice(generate_uid(), generate_uid(), 0, size=16)
    assert send(good) == 0x0000
    assert calls == []
    bad = ct_slice(generate_uid(), generate_uid(), 0, size=16)
    bad.NumberOfFrames = "99999999"  # past [limits] max_frames: refused, by pydicom's reading
    assert send(bad) == 0xC000
    assert len(calls) == 1


@pytest.mark.parametrize("implicit", [False, True])
def test_phantom_header(implicit, tmp_path):
    import aenode.phantom as phantom

    out = tmp_path / "p"
    phantom.generate_study(out, "typical", seed=1, slices=2, extra_series=False,
                           transfer_syntax=_ts(implicit))
    path = sorted(out.rglob("*.dcm"))[0]
    raw = path.read_bytes()
    fp = io.BytesIO(raw)
    pydicom.filereader.read_preamble(fp, False)
    pydicom.filereader._read_file_meta_info(fp)
    data = raw[fp.tell():]
    got = scan_header(data[:64 * 1024], _ts(implicit), HANDLER_TAGS, complete=False)
    assert got is not None
    assert _values(got) == _values(_reference(data, implicit))
    assert got.Rows == 512 and got.StudyInstanceUID
    # The header record the materialiser builds from this reading is the one read_meta
    # (pydicom, from the file) gives, but for the file's path and the masked identifiers.
    record = meta_from_dataset(got, _ts(implicit))
    from_file = read_meta(path)
    assert dataclasses.replace(record, phi=(), path=None) == dataclasses.replace(from_file, phi=(), path=None)
    assert record.image_position and record.slice_thickness and record.image_type
