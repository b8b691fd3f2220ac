-- Signed WeChat plaintext-mode webhooks. The signature covers token, timestamp and nonce only, so
-- one signed path (WRK_PATH, made by scripts/bench) serves every request; each body is a different
-- text message (its own MsgId), so none is taken for a retry.
local counter = 0
local base = 0

function setup(thread)
  thread:set("id", (setup_count or 0))
  setup_count = (setup_count or 0) + 1
end

function init(args)
  math.randomseed(os.time() + (id or 0) * 7919)
  base = math.random(1, 900000) * 1000000000 + (id or 0) * 100000000
end

local path = os.getenv("WRK_PATH")
local headers = { ["Content-Type"] = "text/xml" }

function request()
  counter = counter + 1
  local body = "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[o-bench-" ..
    (counter % 5000) .. "]]></FromUserName><CreateTime>" .. os.time() ..
    "</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[checkin]]></Content><MsgId>" ..
    string.format("%d", base + counter) .. "</MsgId></xml>"
  return wrk.format("POST", path, headers, body)
end
