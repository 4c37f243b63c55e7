"""Outbound integrations: the systems this server hands work to (media server, dialer)."""
