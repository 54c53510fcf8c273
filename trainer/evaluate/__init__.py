"""Evaluation of a candidate: task metrics, bias, response time, and gates as data."""
