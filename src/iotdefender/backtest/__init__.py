"""Backtests: replay retained history through the engine before a behavior goes live."""
