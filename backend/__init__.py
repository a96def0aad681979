"""The InstantStyle backend: the engine (``backend.engine``) and its WebSocket server (``backend.server``)."""

__version__ = "0.1.0"
