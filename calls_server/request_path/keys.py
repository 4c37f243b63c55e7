"""Where in a request's ASGI scope the request path leaves what it found out, for the app's
metrics, traces and access log (plain strings: this module imports nothing)."""

# The spec's `operationId` of the operation answering the request (unset: none did).
OPERATION = "calls.operation"
# The organization whose key pair authenticated the request (unset: none did). In the scope
# rather than a contextvar: reads are authenticated on a worker thread, whose contextvars do
# not come back to the request.
ORGANIZATION_ID = "calls_server.organization_id"
