"""Request -> ack: the HTTP app, connection limits, body reading, limits and rate limits.

Knows only the leaves (``schema``, ``errors``, ``clock``, ``config``) and declares what it
needs of the rest (``app.Keys``, ``app.Journal``, ``app.RequestMetrics``) as protocols.
"""
