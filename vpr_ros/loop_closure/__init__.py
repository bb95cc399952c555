"""Loop-closure decisions over a place map: gates, geometric verification, threshold calibration, match records."""
