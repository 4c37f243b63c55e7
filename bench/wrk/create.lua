-- POST /api/calls/create with the reference (seed) request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-KEY"] = os.getenv("BENCH_KEY")
wrk.headers["X-API-SECRET"] = os.getenv("BENCH_SECRET")
wrk.body = [[{"agent_id": "agent-123", "call_type": "PHONE_CALL", "direction": "OUTBOUND",
  "metadata": {"customer_id": "cust-001", "priority": "high", "campaign": "summer-2024"}}]]
