"""Session fixtures: small real data sets (see issue 2)."""
