"""Errors the API answers with, each rendered once into the envelope by the app.

Hierarchy::

    ApiError                      any error with a status, a message and a reason
    ├── BadRequest            400 the request is valid JSON but asks for something impossible
    ├── Unauthorized          401 missing, unknown, revoked or mismatched credentials
    ├── Forbidden             403 the admin API is disabled
    ├── NotFound              404
    │   ├── CallNotFound          no such call in the caller's organization
    │   ├── OrganizationNotFound
    │   ├── ApiKeyNotFound
    │   ├── AgentNotFound
    │   ├── PhoneNumberNotFound
    │   ├── WebhookNotFound
    │   ├── WebhookEventNotFound
    │   ├── BatchNotFound
    │   └── TaskNotFound
    ├── Conflict              409 the request conflicts with the stored state
    │   ├── DuplicateId           a custom id that exists already
    │   ├── IllegalTransition     a status change the lifecycle does not allow
    │   └── IdempotencyKeyInFlight  the first request with this key has not finished yet
    ├── PreconditionFailed    412 If-Match names another version than the stored one
    ├── RangeNotSatisfiable   416 a Range of bytes starting past the end of a file
    ├── PayloadTooLarge       413 the body is larger than the configured limit
    ├── IdempotencyKeyReused  422 an Idempotency-Key sent again with another request
    ├── QuotaExceeded         429 the organization holds as many calls or bytes as allowed
    ├── RateLimited           429 too many requests (or failed authentications) in a window
    └── StoreUnavailable      503 the data directory cannot be written (e.g. the disk is full)
        └── OutcomeUnknown        the database went away while a change was being committed
"""

from __future__ import annotations

# What a request without both credentials is told (by the security check and by the renderer
# of Connexion's own "no token" error alike).
BOTH_HEADERS = "Both X-API-KEY and X-API-SECRET headers are required"
ADMIN_HEADER = "An 'Authorization: Bearer <admin token>' header is required"
INVALID_ADMIN_TOKEN = "Invalid admin token"


class ApiError(Exception):
    """An error answered with `status_code` and the envelope `{message, error}`."""

    status_code = 500
    message = "Internal server error"

    def __init__(
        self, error: str, message: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(error)
        self.error = error
        if message is not None:
            self.message = message
        # Response headers that go with the error (Retry-After, the current ETag).
        self.headers = headers or {}


class BadRequest(ApiError):
    status_code = 400
    message = "Validation error"  # upstream's word for every 400


class Unauthorized(ApiError):
    status_code = 401
    message = "Unauthorized"


class Forbidden(ApiError):
    status_code = 403
    message = "Forbidden"


class NotFound(ApiError):
    status_code = 404
    message = "Not found"


class CallNotFound(NotFound):
    message = "Call not found"

    def __init__(self, call_id: str, organization_id: str | None = None) -> None:
        # The delete page names the organization (the caller's own), the get page does not.
        within = f" in organization '{organization_id}'" if organization_id else ""
        super().__init__(f"Call with ID '{call_id}' does not exist{within}")


class OrganizationNotFound(NotFound):
    message = "Organization not found"

    def __init__(self, organization_id: str) -> None:
        super().__init__(f"Organization with ID '{organization_id}' does not exist")


class ApiKeyNotFound(NotFound):
    message = "API key not found"

    def __init__(self, api_key_id: str) -> None:
        super().__init__(f"API key with ID '{api_key_id}' does not exist")


class WebhookNotFound(NotFound):
    message = "Post-call webhook not found"

    def __init__(self, webhook_id: str) -> None:
        super().__init__(f"Webhook with ID '{webhook_id}' does not exist")


class WebhookEventNotFound(NotFound):
    message = "Webhook event not found"

    def __init__(self, event_id: str) -> None:
        super().__init__(f"Event with ID '{event_id}' does not exist for this webhook")


class AgentNotFound(NotFound):
    message = "Agent not found"

    def __init__(self, agent_id: str, organization_id: str) -> None:
        super().__init__(
            f"Agent with ID '{agent_id}' does not exist in organization '{organization_id}'"
        )


class PhoneNumberNotFound(NotFound):
    message = "Phone number not found"

    def __init__(self, phone_number: str) -> None:
        super().__init__(f"Phone number '{phone_number}' does not exist")


class BatchNotFound(NotFound):
    message = "Batch call not found"

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"Batch call with ID '{batch_id}' does not exist")


class TaskNotFound(NotFound):
    message = "Batch call task not found"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"Task with ID '{task_id}' does not exist in this batch call")


class Conflict(ApiError):
    status_code = 409
    message = "Conflict"


class DuplicateId(Conflict):
    message = "Duplicate ID"


class IllegalTransition(Conflict):
    message = "Illegal status transition"


class IdempotencyKeyInFlight(Conflict):
    message = "Request in progress"


class RangeNotSatisfiable(ApiError):
    status_code = 416
    message = "Range not satisfiable"


class PreconditionFailed(ApiError):
    status_code = 412
    message = "Precondition failed"


class IdempotencyKeyReused(ApiError):
    status_code = 422
    message = "Idempotency key reused"


class PayloadTooLarge(ApiError):
    status_code = 413
    message = "Payload too large"


class QuotaExceeded(ApiError):
    status_code = 429
    message = "Quota exceeded"


class RateLimited(ApiError):
    status_code = 429
    message = "Too many requests"

    def __init__(
        self,
        error: str,
        message: str | None = None,
        headers: dict[str, str] | None = None,
        limit: str | None = None,
    ) -> None:
        super().__init__(error, message, headers)
        # Which limit refused (`key`, `organization` or `auth_failures`), for the metrics.
        self.limit = limit


class StoreUnavailable(ApiError):
    status_code = 503
    message = "Service unavailable"


class OutcomeUnknown(StoreUnavailable):
    """The connection to the database was lost (or did not answer in time) after a change
    was sent to be committed: it may or may not be stored. Distinct from the plain 503, where
    nothing was written, so that a client finds out before it sends the change again."""

    message = "Outcome unknown"

    def __init__(self, cause: str) -> None:
        super().__init__(
            f"The database stopped answering while this change was being committed ({cause}):"
            " it may or may not have been stored. Find out with a GET of the record (or a"
            " listing), or send the request again with the same Idempotency-Key, which answers"
            " what was stored instead of making it twice"
        )
