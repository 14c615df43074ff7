"""Reuse the Slack fixtures (fake Slack Web API, app served over loopback HTTP) for properties."""

from __future__ import annotations

from tests.slack.conftest import make_slack, slack_api, slack_server

__all__ = ["make_slack", "slack_api", "slack_server"]
