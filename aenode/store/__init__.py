"""The bottom of the data flow: what every later stage stands on.

- :mod:`~aenode.store.db` / :mod:`~aenode.store.datadir`: the database adapter every
  store uses, and the names of every file under ``data_dir``;
- :mod:`~aenode.store.meta`, :mod:`~aenode.store.uids`, :mod:`~aenode.store.marks`:
  shared types (the one instance-header record, the one UID validator, how the node
  marks and recognises its own output);
- :mod:`~aenode.store.spool`, :mod:`~aenode.store.index`, :mod:`~aenode.store.stabilise`:
  the durable spool of received instances, the index with each study's state and
  results, and the quiet timer that declares a study complete.
"""
