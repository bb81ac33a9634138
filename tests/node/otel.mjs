// A Node LLM app traced with OpenTelemetry, exporting OTLP/JSON to a node, each span as it
// ends: the app's span names the user and the session, the model call's span (written by
// hand, as an instrumentation would) carries the GenAI attributes and non-ASCII content.
//
//   node otel.mjs NODE_URL KEY    stdout: {"trace_id", "prompt", "answer"}
import { context, trace } from "@opentelemetry/api";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { NodeTracerProvider, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-node";

const [node, key] = process.argv.slice(2);
const exporter = new OTLPTraceExporter({ url: `${node}/v1/traces`, headers: { "x-api-key": key } });
const provider = new NodeTracerProvider({
  resource: resourceFromAttributes({ "service.name": "node-bot" }),
  spanProcessors: [new SimpleSpanProcessor(exporter)],
});
const tracer = provider.getTracer("node-bot");
const prompt = "日本語で天気を教えて — Ünïcödé 🌸";
const answer = "晴れです。☀️ «très beau»";

const traceId = tracer.startActiveSpan(
  "answer",
  { attributes: { "user.id": "ユーザー-1", "session.id": "会話-1" } },
  (appSpan) => {
    const inApp = trace.setSpan(context.active(), appSpan);
    const call = tracer.startSpan("chat claude-x", {
      attributes: {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-x",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 7,
        "gen_ai.input.messages": JSON.stringify([
          { role: "user", parts: [{ type: "text", content: prompt }] },
        ]),
        "gen_ai.output.messages": JSON.stringify([
          { role: "assistant", parts: [{ type: "text", content: answer }], finish_reason: "stop" },
        ]),
      },
    }, inApp);
    call.end();
    appSpan.end();
    return appSpan.spanContext().traceId;
  },
);
await provider.forceFlush();
await provider.shutdown();
console.log(JSON.stringify({ trace_id: traceId, prompt, answer }));
