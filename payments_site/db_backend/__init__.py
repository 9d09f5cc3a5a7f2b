"""Django's PostgreSQL backend, with health checks only for connections that have been idle (``base.py``)."""
