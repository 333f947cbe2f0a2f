"""Analytics: zones, lines, dwell, counts and camera health, per stream (tracks in, events out).

A layer-1 room: it imports only ``pipeline.types`` and numpy. Everything per frame is an array
operation over all tracks and rules of the stream at once; per-track state lives in a bounded
table that forgets a track when it ends (``analytics.stream.StreamAnalytics``).
"""
