"""The detection engine: pure functions from (profiles, state, datapoint, time) to (state, events)."""
