"""The model domain: which aliases exist, what serves them, their attributes and sampling defaults."""
