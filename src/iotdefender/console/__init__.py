"""The web console at /console: server-rendered pages over the same control plane as the API."""
