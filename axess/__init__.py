"""axess: sessions and authentication for ASGI apps."""
