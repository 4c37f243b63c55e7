"""Adapters to the systems this server talks to (the dialer, the media server, where
webhooks may go, request signing, the clock): no threads or state of their own."""
