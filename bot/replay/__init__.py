"""`bot replay FILE`: a signal history through the real pipeline, against the simulator, on a
virtual clock, and the report of what it did.

    history = read_history(path, "voiceofchain")      # bot.replay.history: the file, checked
    run = replay(settings, history, ...)                # bot.replay.runner: the real bot, driven
    report = build_report(history, run, strategies)     # bot.replay.report: journal and books
    draw(report, history, run.start_prices, "r.png")    # bot.replay.plot: optional (matplotlib)
"""

from bot.replay.history import History, HistoryError, PricePoint, SignalRecord, read_history
from bot.replay.report import ReplayReport, StrategyReport, build_report
from bot.replay.runner import ReplayError, ReplayRun, check_replayable, replay

__all__ = [
    "History",
    "HistoryError",
    "PricePoint",
    "ReplayError",
    "ReplayReport",
    "ReplayRun",
    "SignalRecord",
    "StrategyReport",
    "build_report",
    "check_replayable",
    "read_history",
    "replay",
]
