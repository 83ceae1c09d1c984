"""care-gateway: the edge daemon of an elderly-care station."""

__version__ = "0.1.0"
