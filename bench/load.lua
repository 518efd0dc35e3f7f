-- wrk script: POST deliveries to /webhook. WORKLOAD=ignore cycles through BODIES (one JSON per line);
-- WORKLOAD=handoff (and relay) fills the template's token with a unique number per request.
local counter, bodies, parts = 0, {}, {}
local workload = os.getenv("WORKLOAD")
local token = "987654321"
local threads, next_id = {}, 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(os.getenv("BODIES"), "r"))
  for line in f:lines() do table.insert(bodies, line) end
  f:close()
  local template = bodies[1]
  local start = 1
  while true do
    local i, j = string.find(template, token, start, true)
    if not i then break end
    table.insert(parts, string.sub(template, start, i - 1))
    start = j + 1
  end
  table.insert(parts, string.sub(template, start))
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body
  if workload == "handoff" or workload == "relay" then
    local n = tostring(1000000 + tid * 10000000 + counter)
    body = table.concat(parts, n)
  else
    body = bodies[(counter % #bodies) + 1]
  end
  return wrk.format(nil, "/webhook", nil, body)
end

function done(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format('{"requests": %d, "seconds": %f, "errors": %d, "p50_ms": %f, "p99_ms": %f, "max_ms": %f}\n',
    summary.requests, summary.duration / 1e6, errors, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
