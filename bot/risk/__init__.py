"""The risk gate: only validated intents reach the executor."""

from bot.risk.gate import RiskGate

__all__ = ["RiskGate"]
