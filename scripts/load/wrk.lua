-- wrk script of scripts/load.sh: the request comes from the environment, the result goes to a
-- JSON file. LOAD_METHOD (GET), LOAD_BODY (file whose bytes are the body), LOAD_KEYS (file of
-- API keys, one a line: requests take them in turn, as many clients would), LOAD_DELAY_MS (pause
-- of each connection between requests, jittered ±50 %, to offer a fixed rate below saturation),
-- LOAD_OUT (where done() writes the summary; latencies in microseconds).
wrk.method = os.getenv("LOAD_METHOD") or "GET"
local body_file = os.getenv("LOAD_BODY")
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end
local keys = {}
local keys_file = os.getenv("LOAD_KEYS")
if keys_file and keys_file ~= "" then
  for line in io.lines(keys_file) do
    if line ~= "" then
      keys[#keys + 1] = line
    end
  end
end
local turn = 0

-- Every request is formatted here, also for the bare server (which ignores the key), so that
-- the client does the same work against both.
function request()
  if #keys > 0 then
    turn = turn % #keys + 1
    wrk.headers["x-key"] = keys[turn]
  end
  return wrk.format()
end

local pause = tonumber(os.getenv("LOAD_DELAY_MS") or "")
if pause and pause > 0 then
  -- wrk times each request from its sending, so the pause is not in the latencies.
  function delay()
    return math.floor(pause * (0.5 + math.random()))
  end
end

function done(summary, latency, requests)
  local path = os.getenv("LOAD_OUT")
  if not path or path == "" then
    return
  end
  local out = assert(io.open(path, "w"))
  local e = summary.errors
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "rps": %.1f, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, summary.requests / summary.duration * 1e6,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
  out:close()
end
