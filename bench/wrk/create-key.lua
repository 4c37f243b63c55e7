-- POST /api/calls/create with the seed request and a new Idempotency-Key on every request
-- (what a client that makes every create retry-safe sends): the cost of keeping answers.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-KEY"] = os.getenv("BENCH_KEY")
wrk.headers["X-API-SECRET"] = os.getenv("BENCH_SECRET")
wrk.body = [[{"agent_id": "agent-123", "call_type": "PHONE_CALL", "direction": "OUTBOUND",
  "metadata": {"customer_id": "cust-001", "priority": "high", "campaign": "summer-2024"}}]]

math.randomseed(os.time() + math.floor(os.clock() * 1000000))
local run = tostring(math.random(1, 2147483647))
local counter = 0

request = function()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = "bench-" .. run .. "-" .. counter
  return wrk.format(nil, nil, nil, nil)
end
