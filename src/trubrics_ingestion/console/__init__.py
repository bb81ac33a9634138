"""The console: a node's traffic, live, and its conversations, in the browser.

``tokens`` are the console's sign-in secrets (kept hashed, like keys); ``sessions`` turn a
token into a cookie; ``live`` feeds the requests the app answers to the browsers watching
(bounded, dropping with a count: a stalled viewer never slows ingestion); ``overview`` and
``conversations`` read what the pages show, from an engine when one is configured
(``engines``) or else from the node's store; ``web`` serves it all under ``/console``,
with its pages and assets from ``static/`` (plain HTML, CSS and JS: no build step, no
request leaves the node).
"""
