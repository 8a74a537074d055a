"""sandboxd: self-hosted sandboxes that run untrusted code for AI agents (Baponi API)."""

__version__ = "0.1.0"
