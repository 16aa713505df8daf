"""The application's routers, one per area; :func:`aenode.web.app.create_app` includes them."""
