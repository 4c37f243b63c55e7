"""Request handlers, one module per tag of openapi.yaml, resolved by `operationId`."""
