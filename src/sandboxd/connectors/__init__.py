"""Connectors: the credentials an organization gives its keys' executions (kinds, the key file
their secrets are sealed with, the redaction of their values from output)."""
