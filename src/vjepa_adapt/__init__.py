"""vjepa-adapt: evaluate and adapt V-JEPA 2 to a new video domain."""

__version__ = "0.1.0"
