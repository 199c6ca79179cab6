"""Entry point. gunicorn: ``gunicorn -c gunicorn.conf.py wsgi:app``. Development: ``python wsgi.py``.

The development server must monkey-patch before anything else is imported (gunicorn's
gevent worker does it for us), so sockets, DNS and redis-py cooperate with greenlets.
"""

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

from app import create_app  # noqa: E402

app = create_app()

if __name__ == "__main__":
    from app.server.lifecycle import serve_dev
    from app.services import services

    port = services(app).settings.port
    print(f"Switchboard development server on http://127.0.0.1:{port}/ (Ctrl-C stops)")
    serve_dev(app, "127.0.0.1", port)
