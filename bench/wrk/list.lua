-- POST /api/calls: a page of 20, filtered on status and agent (about 2.5% of the calls).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-KEY"] = os.getenv("BENCH_KEY")
wrk.headers["X-API-SECRET"] = os.getenv("BENCH_SECRET")
wrk.body = [[{"page": 0, "limit": 20, "sort_by": "created_at", "sort_order": "descending",
  "filter_criteria": {"call_status": ["ENDED"], "agent_id": "agent-3"}}]]
