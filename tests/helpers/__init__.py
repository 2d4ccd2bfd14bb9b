"""Test and benchmark helpers (not shipped with the package): servers on loopback, free ports."""
