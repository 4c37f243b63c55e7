"""Wiring: settings, the app factory and the command line."""
