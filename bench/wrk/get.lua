-- GET /api/calls/{id} of random stored calls (ids from the file in BENCH_IDS).
wrk.headers["X-API-KEY"] = os.getenv("BENCH_KEY")
wrk.headers["X-API-SECRET"] = os.getenv("BENCH_SECRET")
local ids = {}
for line in io.lines(os.getenv("BENCH_IDS")) do ids[#ids + 1] = line end
request = function()
  return wrk.format("GET", "/api/calls/" .. ids[math.random(#ids)])
end
