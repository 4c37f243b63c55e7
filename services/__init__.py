"""Long-running services: the work that goes on between requests (the scheduler, batch
dispatch, phone-call dispatch, webhook delivery, the sandbox's play-out), each over the
store and the adapters of `integrations`."""
