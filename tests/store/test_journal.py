"""The receive journal's segments (aenode/store/journal.py): records, torn tails, corrupt
records, locking and recycling."""

from __future__ import annotations

import os
import time

from aenode.store import journal as jm
from aenode.store.journal import RECORD_HEADER, Journal, RecordInfo, Segment


def _die(journal: Journal) -> None:
    """What the kernel does when the owner dies: every descriptor closed, every lock gone."""
    for seg in journal.segments():
        seg.close()


def _append(journal: Journal, seg: Segment, payload: bytes, k: int) -> tuple[int, RecordInfo]:
    """What the receive path does: payload after the header slot, then seal."""
    import zlib

    offset = seg.cursor
    os.pwrite(seg.fd, payload, offset + RECORD_HEADER)
    info = RecordInfo(f"1.2.3.{k}", f"1.2.4.{k}", f"1.2.5.{k}", "1.2.840.10008.5.1.4.1.1.2",
                      "1.2.840.10008.1.2.1", "SCU", time.time_ns(), len(payload), zlib.crc32(payload))
    journal.seal(seg, offset, info)
    return offset, info


def test_records_torn_tail_and_corrupt_record_on_scan(tmp_path):
    journal = Journal(tmp_path / "j")
    assert journal.open() == []
    seg = journal.take()
    payloads = [os.urandom(5000 + 777 * k) for k in range(4)]
    written = [_append(journal, seg, p, k) for k, p in enumerate(payloads)]
    assert seg.pending == 4 and seg.records == 4
    # Bit rot in record 1's payload; record 3 torn: its header made it, half its payload did not.
    os.pwrite(seg.fd, b"\xff", written[1][0] + RECORD_HEADER + 100)
    os.pwrite(seg.fd, bytes(2000), written[3][0] + RECORD_HEADER + 3000)
    # What the next record would have been: payload written, header never (crash before sealing).
    os.pwrite(seg.fd, os.urandom(4000), seg.cursor + RECORD_HEADER)
    path = seg.path
    _die(journal)  # the process dies: its locks go

    again = Journal(tmp_path / "j")
    [found] = again.open()
    assert found.path == path
    good, bad = found.scan()
    assert [info.sop_instance_uid for _, info in good] == ["1.2.5.0", "1.2.5.2"]
    assert [o for o, _ in good] == [written[0][0], written[2][0]]
    assert bad == [(written[1][0], "crc_mismatch"), (written[3][0], "torn_tail")]
    assert found.payload_crc(good[1][0], good[1][1].length) == good[1][1].crc
    again.close()


def test_a_damaged_record_header_does_not_hide_the_records_after_it(tmp_path):
    journal = Journal(tmp_path / "j")
    journal.open()
    seg = journal.take()
    written = [_append(journal, seg, os.urandom(9000), k) for k in range(3)]
    os.pwrite(seg.fd, b"\x00" * 16, written[1][0] + 40)  # bit rot in record 1's header
    _die(journal)
    again = Journal(tmp_path / "j")
    [found] = again.open()
    good, bad = found.scan()
    assert [info.sop_instance_uid for _, info in good] == ["1.2.5.0", "1.2.5.2"]
    assert bad == [(written[1][0], "header_corrupt")]
    assert found.cursor > written[2][0]  # appending resumes after the last record
    again.close()


def test_a_locked_segment_is_not_adopted_and_a_dead_ones_is(tmp_path):
    owner = Journal(tmp_path / "j")
    owner.open()
    seg = owner.take()
    _append(owner, seg, b"x" * 100, 0)
    other = Journal(tmp_path / "j")
    assert other.open() == []  # the owner is alive: its flock stands
    owner.close()
    assert other.orphans() == []  # a clean close keeps a segment a connection still holds
    seg.close()  # the owner process exits
    [adopted] = other.orphans()
    assert adopted.path == seg.path and len(adopted.scan()[0]) == 1
    other.close()


def test_recycling_invalidates_old_records_and_keeps_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(jm, "FREE_KEEP", 1)
    journal = Journal(tmp_path / "j")
    journal.open()
    seg = journal.take()
    assert len(list((tmp_path / "j").iterdir())) == 1
    first_generation = seg.generation
    _append(journal, seg, b"a" * 10_000, 0)
    journal.give_back(seg, time.monotonic())
    assert journal.retirable(time.monotonic(), 0.0) == []  # pending: not materialised yet
    journal.materialised(seg)
    assert journal.retirable(time.monotonic(), 60.0) == []  # not idle yet
    [ready] = journal.retirable(time.monotonic(), 0.0)
    journal.recycle(ready)
    assert seg.generation != first_generation and seg.cursor == jm.SEGMENT_HEADER and seg.records == 0
    again = journal.take()
    assert again is seg  # reused, not a new file
    offset, _ = _append(journal, again, b"b" * 500, 1)
    assert offset == jm.SEGMENT_HEADER
    _die(journal)
    [reopened] = Journal(tmp_path / "j").open()
    good, bad = reopened.scan()
    assert [i.sop_instance_uid for _, i in good] == ["1.2.5.1"] and bad == []  # the old generation is gone
    reopened.close()
    # A second segment beyond FREE_KEEP is removed when recycled.
    j2 = Journal(tmp_path / "j")
    [s1] = j2.open()
    j2.recycle(s1)
    s2 = j2.take()
    assert s2 is s1
    s3 = Segment.create(tmp_path / "j")
    s3.busy = True
    j2._mine[s3.path] = s3
    j2.give_back(s2, time.monotonic())
    j2.recycle(s3)
    assert not s3.path.exists() and len(list((tmp_path / "j").iterdir())) == 1
    j2.close()


def test_a_record_larger_than_a_segment_grows_it_and_reset_shrinks_it(tmp_path, monkeypatch):
    monkeypatch.setattr(jm, "SEGMENT_BYTES", 64 * 1024)
    journal = Journal(tmp_path / "j")
    journal.open()
    seg = journal.take()
    big = os.urandom(200 * 1024)
    _append(journal, seg, big, 0)
    assert seg.full and os.fstat(seg.fd).st_size > 200 * 1024
    assert seg.scan()[0][0][1].length == len(big)
    journal.give_back(seg, time.monotonic())
    journal.materialised(seg)
    assert journal.retirable(time.monotonic(), 60.0) == []  # one full segment: no backlog
    monkeypatch.setattr(jm, "RETIRE_BACKLOG", 0)
    [ready] = journal.retirable(time.monotonic(), 60.0)  # a backlog: the full one goes at once
    journal.recycle(ready)
    assert os.fstat(seg.fd).st_size == 64 * 1024
    journal.close()
