"""Serving a trained model: an OpenAI-compatible HTTP API (`ulysses-pro api`)."""
