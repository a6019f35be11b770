"""gnss stage."""
