"""Inference backends behind one small interface, and the router that picks among them."""
