-- PUT /api/calls/{id} of random stored calls: a metadata merge (one event each).
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-KEY"] = os.getenv("BENCH_KEY")
wrk.headers["X-API-SECRET"] = os.getenv("BENCH_SECRET")
local ids = {}
for line in io.lines(os.getenv("BENCH_IDS")) do ids[#ids + 1] = line end
local n = 0
request = function()
  n = n + 1
  local body = '{"metadata": {"bench_key": ' .. n .. '}}'
  return wrk.format("PUT", "/api/calls/" .. ids[math.random(#ids)], nil, body)
end
