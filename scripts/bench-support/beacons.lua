-- H5 beacon batches (5 events each, as sdk.js sends them with sendBeacon), every event a new UUID.
local site = os.getenv("WRK_SITE")
local headers = { ["Content-Type"] = "text/plain;charset=UTF-8" }
local counter = 0

function setup(thread)
  thread:set("id", (setup_count or 0))
  setup_count = (setup_count or 0) + 1
end

function init(args)
  math.randomseed(os.time() + (id or 0) * 104729)
end

local function uuid()
  return string.format("%08x-%04x-4%03x-%04x-%04x%08x", math.random(0, 0x7fffffff), math.random(0, 0xffff),
    math.random(0, 0xfff), 0x8000 + math.random(0, 0x3fff), math.random(0, 0xffff), math.random(0, 0x7fffffff))
end

function request()
  counter = counter + 1
  local now = os.date("!%Y-%m-%dT%H:%M:%SZ")
  local events = {}
  local types = { "page_view", "click", "dwell", "click", "share" }
  for i = 1, 5 do
    events[i] = '{"id":"' .. uuid() .. '","type":"' .. types[i] .. '","occurredAt":"' .. now ..
      '","url":"https://brand.example/spring?p=' .. counter .. '","title":"Spring sale","referrer":"","openid":"o-bench-' ..
      (counter % 5000) .. '"}'
  end
  local body = '{"site":"' .. site .. '","clientId":"client-' .. (id or 0) .. '-' .. counter .. '","events":[' ..
    table.concat(events, ",") .. ']}'
  return wrk.format("POST", "/v1/collect", headers, body)
end
