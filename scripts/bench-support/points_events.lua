-- Pre-signed /v1/events batches from WRK_REQUESTS ("timestamp<TAB>signature<TAB>body" lines, made
-- by `FanFlowBench points-requests`). Thread i sends lines i, i+n, i+2n…; a thread that runs out
-- starts over, and those repeats are answered "duplicate" and published no more (the bench counts
-- what the gateway accepted, not what wrk sent).
local requests = {}
local index = 0

function setup(thread)
  thread:set("id", (setup_count or 0))
  setup_count = (setup_count or 0) + 1
end

function init(args)
  local threads = tonumber(os.getenv("WRK_THREADS") or "2")
  local app = os.getenv("WRK_APP")
  local n = 0
  for line in io.lines(os.getenv("WRK_REQUESTS")) do
    if n % threads == (id or 0) then
      local first = line:find("\t", 1, true)
      local second = line:find("\t", first + 1, true)
      requests[#requests + 1] = wrk.format("POST", "/v1/events", {
        ["Content-Type"] = "application/json",
        ["X-FanFlow-App"] = app,
        ["X-FanFlow-Timestamp"] = line:sub(1, first - 1),
        ["X-FanFlow-Signature"] = line:sub(first + 1, second - 1),
      }, line:sub(second + 1))
    end
    n = n + 1
  end
end

function request()
  index = index % #requests + 1
  return requests[index]
end
