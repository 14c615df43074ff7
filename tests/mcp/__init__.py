"""Tests of the MCP face (tools/)."""
