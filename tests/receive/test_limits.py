"""The [limits] section: safe defaults, errors that name the key, and the bounded PDU reader."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from aenode.config import ConfigError, LimitsConfig, parse_config
from aenode.receive.pdu import MessageWatch, PDUReader, PDURefused, PeerClosed, read_pdu

from .rawdicom import associate_rq, command, p_data, pdv

MiB = 1024 * 1024


def test_defaults_are_bounded():
    limits = parse_config({}).limits
    assert limits.max_pdu_bytes == 4 * MiB
    assert limits.max_associate_request_bytes == 256 * 1024
    assert 0 < limits.associate_timeout_seconds <= 30 and 0 < limits.pdu_timeout_seconds <= 60
    assert limits.max_connections_per_peer <= limits.max_pending_connections
    assert limits.max_decoded_instance_bytes <= 1024 * MiB and limits.max_instance_bytes <= 1024 * MiB


@pytest.mark.parametrize("section,needle", [
    ({"max_pdu_byte": 1}, "limits.max_pdu_byte"),  # unknown key
    ({"max_pdu_bytes": 10}, "limits.max_pdu_bytes"),  # below the minimum
    ({"pdu_timeout_seconds": 0}, "limits.pdu_timeout_seconds"),
    ({"max_connections_per_peer": "many"}, "limits.max_connections_per_peer"),
])
def test_bad_limits_name_the_key(section, needle):
    with pytest.raises(ConfigError) as info:
        parse_config({"limits": section})
    assert needle in str(info.value)


def _pair():
    a, b = socket.socketpair()
    return a, b


@pytest.mark.parametrize("header,limit", [
    (b"\x01\x00\xff\xff\xff\xff", "max_associate_request_bytes"),
    (b"\x04\x00" + struct.pack(">L", 4 * MiB + 1), "max_pdu_bytes"),
    (b"\x07\x00" + struct.pack(">L", 300 * 1024), "max_associate_request_bytes"),
])
def test_declared_length_refused_with_default_limits(header, limit):
    ours, theirs = _pair()
    theirs.sendall(header)
    with pytest.raises(PDURefused) as info:
        read_pdu(ours, LimitsConfig(), deadline=time.monotonic() + 10)
    assert info.value.reason == "pdu_too_large" and info.value.limit == limit
    ours.close()
    theirs.close()


def test_first_pdu_must_be_an_associate_request():
    ours, theirs = _pair()
    theirs.sendall(p_data(pdv(1, 3, command(0x0030, "1.2.840.10008.1.1"))))
    with pytest.raises(PDURefused) as info:
        PDUReader(LimitsConfig()).read_associate_request(ours, deadline=time.monotonic() + 10)
    assert info.value.reason == "expected_associate_request"


def test_large_pdu_read_as_it_arrives():
    ours, theirs = _pair()
    body = bytes(range(256)) * (3 * MiB // 256)
    pdu = p_data(pdv(1, 0, body))
    import threading

    sender = threading.Thread(target=theirs.sendall, args=(pdu,))
    sender.start()
    got = read_pdu(ours, LimitsConfig(), deadline=time.monotonic() + 10)
    sender.join()
    assert bytes(got) == pdu


def test_deadline_with_a_clock():
    """A peer that stops mid-PDU is cut at the deadline, measured by the reader's clock."""
    now = [0.0]
    ours, theirs = _pair()
    theirs.sendall(associate_rq()[:20])  # and then nothing
    reader = PDUReader(LimitsConfig(associate_timeout_seconds=1.0), clock=lambda: now[0])

    def tick():
        now[0] += 0.6
        return now[0]

    reader.clock = tick
    with pytest.raises(PDURefused) as info:
        reader.read_associate_request(ours, deadline=1.0)
    assert info.value.limit == "associate_timeout_seconds"


def test_closed_mid_pdu():
    ours, theirs = _pair()
    theirs.sendall(associate_rq()[:30])
    theirs.close()
    with pytest.raises(PeerClosed):
        read_pdu(ours, LimitsConfig(), deadline=time.monotonic() + 10, associate=True)


def test_message_watch_rules():
    limits = LimitsConfig(message_timeout_seconds=2.0)
    watch = MessageWatch(limits)
    echo = p_data(pdv(1, 3, command(0x0030, "1.2.840.10008.1.1")))
    watch.feed(echo, 0.0)
    assert not watch.in_message
    store = p_data(pdv(3, 3, command(0x0001, "1.2.840.10008.5.1.4.1.1.2", 1, "1.2.3", data_set=True)))
    watch.feed(store, 1.0)
    assert watch.in_message
    watch.feed(p_data(pdv(3, 0, b"x" * 100)), 2.0)
    with pytest.raises(PDURefused) as info:
        watch.feed(p_data(pdv(3, 0, b"x" * 100)), 3.5)
    assert info.value.limit == "message_timeout_seconds"
    for bad, reason in ((p_data(pdv(1, 3, command(0x0020, "1.2.840.10008.5.1.4.1.2.1.1"))), "unsupported_command"),
                        (p_data(pdv(1, 2, b"data before any command")), "unexpected_data_set"),
                        (p_data(pdv(1, 1, b"\0" * 70000)), "command_too_large"),
                        (b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x09\x01\x03xx", "malformed_pdv")):
        with pytest.raises(PDURefused) as info:
            MessageWatch(limits).feed(bad, 0.0)
        assert info.value.reason == reason
