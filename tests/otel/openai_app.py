"""An LLM app as users write them: the official OpenAI client, instrumented with
OpenTelemetry, exporting to a node over OTLP/HTTP (protobuf, gzip) with the real exporters,
each span and log record as it ends. The model is a stub OpenAI server on loopback.

    python openai_app.py NODE_URL KEY {openai-v2 MODE | openinference}

MODE is opentelemetry-instrumentation-openai-v2's content capture (NO_CONTENT, SPAN_ONLY,
EVENT_ONLY). The app wraps the call in a span of its own naming the user and the session
(openai-v2), or sets them with OpenInference's ``using_attributes``. Prints the ids of the
trace and of the app's span, and the answer, as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROMPT = "Quelle est la météo à Zürich ? 🌦"
ANSWER = "Il fait beau à Zürich, 22 °C ☀️"
MODEL, RESPONSE_MODEL = "gpt-4o-mini", "gpt-4o-mini-2024-07-18"
USER, SESSION = "user-ü-42", "session-7"


class StubOpenAI(BaseHTTPRequestHandler):
    """``POST /v1/chat/completions``: always the same answer, with usage."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        answer = {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": RESPONSE_MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30},
        }
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def main(node: str, key: str, instrumentation: str, mode: str = "NO_CONTENT") -> None:
    os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "gen_ai_latest_experimental"
    os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = mode
    os.environ["OTEL_EXPORTER_OTLP_HEADERS"] = f"x-api-key={key}"
    stub = ThreadingHTTPServer(("127.0.0.1", 0), StubOpenAI)
    threading.Thread(target=stub.serve_forever, daemon=True).start()

    import openai
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    resource = Resource.create({"service.name": "weather-bot"})
    gzip = Compression.Gzip
    spans = TracerProvider(resource=resource)
    spans.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=node + "/v1/traces", compression=gzip))
    )
    logs = LoggerProvider(resource=resource)
    logs.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(endpoint=node + "/v1/logs", compression=gzip))
    )
    client = openai.OpenAI(api_key="sk-stub", base_url=f"http://127.0.0.1:{stub.server_port}/v1")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    tracer = spans.get_tracer("weather-bot")
    if instrumentation == "openai-v2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

        OpenAIInstrumentor().instrument(tracer_provider=spans, logger_provider=logs)
        with tracer.start_as_current_span(
            "answer", attributes={"user.id": USER, "session.id": SESSION}
        ) as app_span:
            reply = client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    else:
        from openinference.instrumentation import using_attributes
        from openinference.instrumentation.openai import OpenAIInstrumentor as OpenInference

        OpenInference().instrument(tracer_provider=spans)
        with (
            using_attributes(user_id=USER, session_id=SESSION),
            tracer.start_as_current_span("answer") as app_span,
        ):
            reply = client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    context = app_span.get_span_context()
    spans.shutdown()
    logs.shutdown()
    stub.shutdown()
    print(
        json.dumps(
            {
                "trace_id": f"{context.trace_id:032x}",
                "app_span_id": f"{context.span_id:016x}",
                "answer": reply.choices[0].message.content,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
