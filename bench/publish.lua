-- wrk script for `make bench`: POST one realistic 100-event batch to /publish_events,
-- over and over on keep-alive connections, and count every response that is not a 200.
--
-- The key comes from the BENCH_API_KEY environment variable (bench/run.py sets it). The
-- body is built once per thread from a fixed seed; each request then stamps a unique
-- "batch" marker into it, because the server rightly stores a repeated body only once.
-- BENCH_RUN (a fresh token per wrk run) keeps markers unique across the warm-up and the
-- measured run against the same server: otherwise the second run repeats the first's.
-- done() prints one line starting with "BENCH_RESULT " holding JSON, which run.py reads:
-- counts are exact there (requests started, 200s, non-200s), latencies in microseconds.
-- BENCH_DELAY_MS, if set, paces the load: each connection waits that many milliseconds
-- on average before each request (wrk's delay() hook), so C connections send at most
-- C * 1000 / BENCH_DELAY_MS requests/s (less by the response time): run.py's half-rate
-- round.

local key = os.getenv("BENCH_API_KEY")
if key == nil or key == "" then
   error("BENCH_API_KEY is not set")
end

local run = os.getenv("BENCH_RUN") or ""

local USERS = 40
local EVENTS = {
   "Sign up", "Login", "Page view", "Prompt", "Generation", "Thumbs up", "Thumbs down",
   "Copied answer", "Regenerate", "Shared conversation", "Upgrade plan", "Search",
}
local MODELS = { "gpt-4o-mini", "gpt-4o", "claude-3-5-sonnet", "llama-3.1-70b" }
local PAGES = { "/chat", "/settings", "/billing", "/docs/quickstart", "/home" }
local WORDS = {
   "how", "do", "I", "export", "my", "events", "to", "a", "warehouse", "the", "assistant",
   "answered", "quickly", "but", "missed", "context", "about", "billing", "please", "summarise",
   "this", "thread", "in", "three", "bullet", "points", "and", "suggest", "next", "steps",
}

-- Park-Miller instead of math.random: identical bodies on every LuaJIT build. Its
-- products stay below 2^53, so Lua's doubles compute them exactly.
local state = 20241128
local function rand(n)
   state = (state * 16807) % 2147483647
   return state % n + 1
end

local function pick(list)
   return list[rand(#list)]
end

local function sentence(words)
   local out = {}
   for i = 1, words do
      out[i] = pick(WORDS)
   end
   return table.concat(out, " ")
end

local function hex(digits)
   local out = {}
   for i = 1, digits do
      out[i] = string.format("%x", rand(16) - 1)
   end
   return table.concat(out)
end

local function uuid4()
   return string.format("%s-%s-4%s-a%s-%s", hex(8), hex(4), hex(3), hex(3), hex(12))
end

-- Conversations span several events, so a batch holds fewer threads than events.
local THREADS = {}
for i = 1, 25 do
   THREADS[i] = uuid4()
end

local function timestamp(i)
   local minute, second = 10 + i % 50, (i * 7) % 60
   if i % 3 == 0 then -- the Python SDK's isoformat(), with an offset
      return string.format("2024-11-28T14:%02d:%02d.%06d+00:00", minute, second, rand(999999))
   end
   return string.format("2024-11-28T14:%02d:%02d.%03dZ", minute, second, rand(999))
end

local function event(i)
   local props = string.format(
      '{"$thread_id":"%s","$text":"%s","model":"%s","page":"%s",'
         .. '"latency_ms":%d,"tokens":%d,"app_version":"2.%d.%d","is_paying":%s}',
      pick(THREADS), sentence(8 + rand(16)), pick(MODELS), pick(PAGES),
      rand(4000), rand(2000), rand(9), rand(30), rand(2) == 1 and "true" or "false"
   )
   return string.format(
      '{"user_id":"user_%04d@example.com","event":"%s","timestamp":"%s","properties":%s}',
      rand(USERS), pick(EVENTS), timestamp(i), props
   )
end

local MARKER = "@BATCH@"

local function batch(size)
   local items = {}
   for i = 1, size do
      items[i] = event(i)
   end
   -- The first event carries the per-request marker, in the user_id the server indexes.
   items[1] = items[1]:gsub('"user_id":"', '"user_id":"' .. MARKER, 1)
   return "[" .. table.concat(items, ",") .. "]"
end

wrk.method = "POST"
wrk.path = "/publish_events"
wrk.body = batch(100)
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-api-key"] = key

-- Each wait is drawn from an exponential distribution of mean BENCH_DELAY_MS, so the
-- connections send independently of each other: together, a Poisson stream at the asked
-- rate, as many independent clients make. Equal waits kept them in step instead: every
-- connection sent at once, each period, which is a saturating burst, not a half load.
local pace = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if pace then
   function delay()
      return -math.log(1 - math.random()) * pace
   end
end

local threads = {}

function setup(thread)
   thread:set("thread_id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   math.randomseed(thread_id)
   started, ok, non200, statuses = 0, 0, 0, {}
   body_bytes = #wrk.body
   local at = wrk.body:find(MARKER, 1, true)
   head, tail = wrk.body:sub(1, at - 1), wrk.body:sub(at + #MARKER)
end

function request()
   started = started + 1
   local body = head .. string.format("%s-t%d-r%d-", run, thread_id, started) .. tail
   return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
   if status == 200 then
      ok = ok + 1
   else
      non200 = non200 + 1
      statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
   end
end

local function merge(into, from)
   for status, count in pairs(from or {}) do
      into[status] = (into[status] or 0) + count
   end
end

local function json_counts(counts)
   local parts = {}
   for status, count in pairs(counts) do
      table.insert(parts, string.format('"%s":%d', status, count))
   end
   return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
   local total = { started = 0, ok = 0, non200 = 0, statuses = {}, body_bytes = 0 }
   for _, thread in ipairs(threads) do
      total.started = total.started + thread:get("started")
      total.ok = total.ok + thread:get("ok")
      total.non200 = total.non200 + thread:get("non200")
      total.body_bytes = thread:get("body_bytes")
      merge(total.statuses, thread:get("statuses"))
   end
   local e = summary.errors
   if total.non200 > 0 then
      io.stderr:write(string.format(
         "!!! %d NON-200 RESPONSES: %s\n", total.non200, json_counts(total.statuses)))
   end
   print(string.format(
      'BENCH_RESULT {"duration_us":%d,"requests":%d,"started":%d,"ok":%d,"non200":%d,'
         .. '"statuses":%s,"body_bytes":%d,"socket_errors":{"connect":%d,"read":%d,'
         .. '"write":%d,"timeout":%d},"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,'
         .. '"p99":%d,"max":%d}}',
      summary.duration, summary.requests, total.started, total.ok, total.non200,
      json_counts(total.statuses), total.body_bytes, e.connect, e.read, e.write, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max
   ))
end
