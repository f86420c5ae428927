"""livedigit: real-time handwritten digit recognition over WebSockets."""

__version__ = "1.0.0"
