"""The request path: every operation of openapi.yaml compiled, at start-up, into its route,
security, parameter parsers, body validator and answer writer (`api.CompiledApi`, an ASGI
middleware in Connexion's stack in place of its routing, security, validation and context
middlewares).

Its boundary: it imports nothing of the app (`tests/unit/test_layers.py` holds it), only the
domain's errors and envelope, Connexion, jsonschema, fastjsonschema and orjson. What it needs
of the app is passed in: the spec and handlers through Connexion's `add_api`, and whether the
app's store reads wait for a database (`reads_wait`, when an operation leaves the event
loop). What it tells the app it leaves in the request's scope, under the keys of `keys.py`:
the spec's `operationId` of the operation answering, the organization that authenticated.
Refusals are the project's errors in their final words, raised where they are found. The
private Connexion names it relies on are listed in `connexion_private.py`, pinned by
`tests/unit/test_connexion_internals.py`.

This module imports nothing, so that `keys` can be read by the modules every command loads
(logging) without loading the web stack.
"""
