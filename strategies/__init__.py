"""Strategies: user plug-ins that turn a Signal into order intents. See strategies.base."""
