"""OpenTelemetry in: an OTLP/HTTP receiver whose GenAI spans and log records become the same
Prompt and Generation events that ``/publish_llm_events`` stores.

``wire`` decodes an export (protobuf or JSON) into the ``records`` the node journals,
``conventions`` knows the GenAI semantic conventions (which span is a model call, who the
user is, where the content is), ``receiver`` is what the HTTP app asks for an export, and
``resolver`` turns journaled exports into stored calls once each trace can be resolved.
"""
