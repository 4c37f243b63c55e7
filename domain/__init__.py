"""The domain core: call records and their rules, listing, keys, webhooks, the envelope and
the API's errors.

Pure code: no I/O, no framework, no clock (the time comes in as an argument); the only
outside input is the randomness of new ids and secrets. Handlers, integrations and storage
backends all build on it.
"""
