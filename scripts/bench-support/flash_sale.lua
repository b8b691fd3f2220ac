-- Reservation attempts from WRK_REQUESTS ("token<TAB>requestId" lines, made by `FanFlowBench
-- flash-sale-requests`) against WRK_SALE. Thread i sends lines i, i+n, i+2n…; a thread that runs
-- out starts over, and a repeated request id gets its first answer again (no second unit).
-- Every answer's status is counted, so the bench can tell reservations from refusals.
local requests = {}
local index = 0
statuses = {}
local threads = {}

function setup(thread)
  thread:set("id", (setup_count or 0))
  setup_count = (setup_count or 0) + 1
  table.insert(threads, thread)
end

function init(args)
  local n_threads = tonumber(os.getenv("WRK_THREADS") or "2")
  local path = "/v1/flash-sales/" .. os.getenv("WRK_SALE") .. "/reservations"
  local n = 0
  for line in io.lines(os.getenv("WRK_REQUESTS")) do
    if n % n_threads == (id or 0) then
      local tab = line:find("\t", 1, true)
      requests[#requests + 1] = wrk.format("POST", path, {
        ["Content-Type"] = "application/json",
        ["Authorization"] = "Bearer " .. line:sub(1, tab - 1),
      }, '{"quantity":1,"requestId":"' .. line:sub(tab + 1) .. '"}')
    end
    n = n + 1
  end
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    local counted = thread:get("statuses") or {}
    for status, n in pairs(counted) do totals[status] = (totals[status] or 0) + n end
  end
  for status, n in pairs(totals) do io.write(string.format("status %d %d\n", status, n)) end
end
