"""The budget-guarded LLM gateway: the core (``bot.core``), the Slack face, jobs, server and CLI."""
