"""modem stage."""
