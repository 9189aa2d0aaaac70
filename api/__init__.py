"""The HTTP API: a Litestar app built by `api.app.create_app(container)`."""
