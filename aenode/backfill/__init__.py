"""Retrospective backfill (issue 14): ``aenode backfill`` finds past CT studies in a PACS
with C-FIND and retrieves each unseen one with C-MOVE to the node's own AE title, so the
running node analyses it and past months enter the surveillance.

It sits above the node wiring (beside ``cli``): it drives the PACS and the running
node's receive/index from outside, and imports only the stores and configuration.
"""
