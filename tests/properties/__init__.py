"""Property-based tests (hypothesis) over config, prompts and Slack payloads."""
