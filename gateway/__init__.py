"""Routoo's OpenAI-compatible gateway: an HTTP server that asks the selector which pool model should answer
each chat completion and forwards the request to that model's upstream (gateway/app.py)."""
