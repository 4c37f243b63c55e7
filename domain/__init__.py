"""The domain core: call records and their rules, listing, keys, and the API's errors.

Pure code: no I/O, no framework. Handlers and storage backends both build on it.
"""
