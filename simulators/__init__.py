"""Device and platform simulators that speak the real wire formats.

They are written from the datasheets with literal constants and never import `drivers/`,
so a test that pins both sides catches a misreading shared by decoder and encoder.
"""
