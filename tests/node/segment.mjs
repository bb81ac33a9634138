// Run Segment's Trubrics destination (the real "Trubrics (Actions)" code from
// @segment/action-destinations) on Segment events, as Segment's runtime does: a Destination
// from @segment/actions-core, a subscription per action with the action's default mappings,
// onEvent for one event and onBatch for a batch. Its requests go to https://{url}/...
//
//   node segment.mjs < scenario     (NODE_EXTRA_CA_CERTS names the CA of the HTTPS server)
//   scenario: {"url": "127.0.0.1:PORT/api/ingestion", "apiKey": "...",
//              "calls": [{"action": "track"|"identify", "events": [SegmentEvent, ...]}]}
//             (one event: onEvent; more: onBatch)
//   stdout:   {"results": [what onEvent/onBatch returned, or {error, status} if it threw]}
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { Destination, defaultValues } = require("@segment/actions-core");
const trubrics = require("@segment/action-destinations/dist/destinations/trubrics").default;

const SUBSCRIBE = { track: 'type = "track"', identify: 'type = "identify"' };
const scenario = JSON.parse(readFileSync(0, "utf8"));
const destination = new Destination(trubrics);

const settings = (action) => ({
  apiKey: scenario.apiKey,
  url: scenario.url,
  subscription: {
    subscribe: SUBSCRIBE[action],
    partnerAction: action,
    mapping: defaultValues(trubrics.actions[action].fields),
  },
});

// Both throw on an error answer (an HTTPError): report it, and its status, as the result.
const run = ({ action, events }) =>
  events.length === 1
    ? destination.onEvent(events[0], settings(action))
    : destination.onBatch(events, settings(action));
const refused = (error) => ({ error: error.message, status: error.response?.status ?? null });
const results = [];
for (const call of scenario.calls) {
  results.push(await run(call).catch(refused));
}
console.log(JSON.stringify({ results }));
