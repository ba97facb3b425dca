-- wrk script for bench/load.py: POST /score with rotating bodies, a JSON summary in done().
-- Arguments (after wrk's `--`): streams, bodies, pool, stride, cold (1/0), token, user prefix.
local nstreams, nbodies, pool, stride, cold, token, user
local headers = {["Content-Type"] = "application/json"}
local bodies = {}
local counter = 0
local threads = {}

local function make_body(userid, url_of)
  local parts = {}
  for i = 0, nstreams - 1 do
    parts[#parts + 1] = '{"streamUrl":"' .. url_of(i) .. '"}'
  end
  return '{"user":{"userid":"' .. userid .. '"},"streams":[' .. table.concat(parts, ",")
    .. '],"playlist":{"name":"home"}}'
end

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  nstreams, nbodies, pool, stride = tonumber(args[1]), tonumber(args[2]), tonumber(args[3]),
    tonumber(args[4])
  cold, token, user = args[5] == "1", args[6], args[7]
  if not cold then
    for k = 0, nbodies - 1 do
      bodies[k + 1] = make_body(user .. k, function(i)
        return "https://example.com/s/" .. ((k * stride + i) % pool)
      end)
    end
  end
end

function request()
  counter = counter + 1
  local body
  if cold then
    -- Fresh stream URLs on every request: each one is a feature-store read.
    local tag = token .. "-" .. tid .. "-" .. counter
    body = make_body("c" .. counter, function(i)
      return "https://example.com/c/" .. tag .. "/" .. i
    end)
  else
    body = bodies[(counter % nbodies) + 1]
  end
  return wrk.format("POST", "/score", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
