"""chatapi: a self-hosted, OpenAI-compatible ChatCompletion API server."""

__version__ = "0.1.0"
