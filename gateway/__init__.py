"""Palisade gateway: zero-trust inference gateway for a private LLM."""
