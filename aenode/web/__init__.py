"""The web dashboard, JSON API and operational endpoints (``/healthz``, ``/metrics``).

:mod:`aenode.node` starts it as :class:`aenode.web.worker.WebWorker` (uvicorn in a thread
of the node process, sharing the node's stores); :func:`aenode.web.app.create_app` builds
the FastAPI application from one router per area (:mod:`aenode.web.routes`).  Business
logic lives in :mod:`aenode.web.services` (acknowledge, confirm, verified SR) and the read
models in :mod:`aenode.web.data`; :mod:`aenode.web.auth` and :mod:`aenode.web.throttle`
cover users, roles, sessions, CSRF and login abuse; :mod:`aenode.web.store` is the only
code that talks SQL to the dashboard's database.
"""
