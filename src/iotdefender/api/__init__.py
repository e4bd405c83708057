"""The AWS IoT REST API: model-driven routing, parsing, validation, SigV4, errors."""
