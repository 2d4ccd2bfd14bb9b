"""Metric names (``names``: every metric the package records, built in one place) and the one validation metric a
run is judged by (``monitor``)."""
