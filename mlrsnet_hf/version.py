"""The library version, in a module of its own so that the package's modules import it without importing the package."""

__version__ = "0.1.0"
