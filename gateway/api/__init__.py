"""HTTP routes: OpenAI- and TGI-compatible inference, health, admin."""
