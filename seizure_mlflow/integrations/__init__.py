"""Integrations with other tools, one module each, each importing its tool only when used (an optional extra)."""
