// Publish a scenario through the unmodified Trubrics JS SDK and report every request it made.
// The SDK only logs its failures (console.error), so this driver is what turns them into an exit code.
//
//   TRUBRICS_API_KEY=... node publish.mjs HOST [SCENARIO_JSON]   (scenario from stdin if omitted)
//   scenario: {"events": [{user_id, event, properties?, timestamp?}],
//              "llm_events": [{user_id, prompt, generation, assistant_id, latency?, properties?, timestamp?}]}
//   stdout:   {"requests": [{url, status, items}]}
import { readFileSync } from "node:fs";
import { Trubrics } from "@trubrics/trubrics";

const [host, arg] = process.argv.slice(2);
const scenario = JSON.parse(arg ?? readFileSync(0, "utf8"));
const requests = [];

// The SDK calls the global fetch; wrap it to see each request's outcome.
const realFetch = globalThis.fetch;
globalThis.fetch = async (url, init) => {
  const record = { url: String(url), status: null, items: JSON.parse(init.body).length };
  requests.push(record);
  const response = await realFetch(url, init);
  record.status = response.status;
  return response;
};

const withDate = ({ timestamp, ...rest }) =>
  timestamp === undefined ? rest : { ...rest, timestamp: new Date(timestamp) };

const trubrics = new Trubrics({ apiKey: process.env.TRUBRICS_API_KEY, host });
const events = scenario.events ?? [];
const llmEvents = scenario.llm_events ?? [];
events.forEach((event) => trubrics.track(withDate(event)));
llmEvents.forEach((event) => trubrics.trackLLM(withDate(event)));
if (trubrics.queue.length !== events.length + llmEvents.length) {
  console.error("the SDK rejected some events (see above)");
  process.exit(2);
}

// flush() sends at most 100 queued items per call, and returns at once while the SDK's own
// periodic flush is running: loop, yielding to the event loop, until everything has gone.
while (trubrics.queue.length > 0 || trubrics.isFlushing) {
  await trubrics.flush();
  await new Promise((resolve) => setTimeout(resolve, 10));
}

console.log(JSON.stringify({ requests }));
// The SDK's setInterval would keep the process alive forever.
process.exit(requests.every((request) => request.status === 200) ? 0 : 1);
