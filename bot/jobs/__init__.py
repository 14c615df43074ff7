"""Scheduled jobs: budget alerts delivered to Slack channels, and daily/weekly spend reports.

``JobRunner`` schedules them inside the server process; ``bot report`` builds a report on demand.
"""

from bot.jobs.runner import JobRunner

__all__ = ["JobRunner"]
