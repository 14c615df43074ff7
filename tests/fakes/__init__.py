"""Fakes that are real servers on loopback: the model providers, the Slack Web API, Socket Mode."""
