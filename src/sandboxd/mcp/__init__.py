"""The MCP surface: sandbox_execute, files_list and files_download at /mcp, over the services."""

from .endpoint import mount_mcp

__all__ = ["mount_mcp"]
