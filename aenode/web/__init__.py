"""The web dashboard, JSON API and operational endpoints (``/healthz``, ``/metrics``).

Started by ``aenode serve`` as the pipeline worker ``aenode.web.worker:WebWorker``
(uvicorn in a thread of the node process); :func:`aenode.web.app.create_app` builds the
FastAPI application for tests.  See ``aenode/web/auth.py`` for users, roles, sessions and
CSRF, ``aenode/web/store.py`` for acknowledgements, confirmations and the audit log.
"""
