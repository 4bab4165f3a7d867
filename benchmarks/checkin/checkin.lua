-- wrk script: each request is a fleet-protocol check-in of the next device in turn.
-- Reads DEVICES_FILE (one "device_id token version" line per device).
-- TARGET_PATH (default: the check-in route) lets the baseline send the very same
-- requests to the constant-JSON route, so client and HTTP parsing costs are equal.
local devices = {}
local count = 0
local index = 0
local path = os.getenv("TARGET_PATH") or "/api/v1/devices/checkin"

function init(args)
  local path = os.getenv("DEVICES_FILE")
  for line in io.lines(path) do
    local id, token, version = line:match("(%S+) (%S+) (%S+)")
    count = count + 1
    devices[count] = {id = id, token = token, version = version}
  end
end

function request()
  index = index + 1
  if index > count then index = 1 end
  local d = devices[index]
  local body = '{"device_id":"' .. d.id .. '","app":"bench","platform":"linux-x86_64",' ..
    '"channel":"stable","tags":{"site":"s' .. (index % 7) .. '"},"version":"' .. d.version ..
    '","state":"idle","kept":["' .. d.version .. '"],"failed":[]}'
  return wrk.format("POST", path,
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. d.token}, body)
end
