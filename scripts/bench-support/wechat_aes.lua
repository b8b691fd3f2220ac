-- Pre-signed WeChat safe-mode webhooks from WRK_REQUESTS ("path<TAB>body" lines, one distinct
-- event each, made by `FanFlowBench gateway-requests`). Thread i replays lines i, i+n, i+2n…, so no
-- two threads send the same event; a thread that runs out starts over (those count as retries).
local requests = {}
local index = 0

function setup(thread)
  thread:set("id", (setup_count or 0))
  setup_count = (setup_count or 0) + 1
end

function init(args)
  local threads = tonumber(os.getenv("WRK_THREADS") or "2")
  local n = 0
  for line in io.lines(os.getenv("WRK_REQUESTS")) do
    if n % threads == (id or 0) then
      local tab = line:find("\t", 1, true)
      requests[#requests + 1] = wrk.format("POST", line:sub(1, tab - 1), { ["Content-Type"] = "text/xml" }, line:sub(tab + 1))
    end
    n = n + 1
  end
end

function request()
  index = index % #requests + 1
  return requests[index]
end
