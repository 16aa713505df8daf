"""Real peers of the node, started locally: a PACS (Orthanc) and an alert receiver.

The tests and ``aenode demo`` use them so that every integration path runs against the
real thing on loopback ports, not a mock.
"""
