"""The live server's room (FastAPI app, REST for streams, WebSocket hub, metrics, auth).

Not built yet: the live-server issue fills it. It depends on ``pipeline/`` (the same Engine,
trackers and v1 wire encoder that replay uses) and nothing depends on it.
"""
