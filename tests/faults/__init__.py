"""Fault matrix: every upstream fault through the SDKs, the gateway and the SQLite ledger."""
