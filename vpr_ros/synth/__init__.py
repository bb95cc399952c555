"""Synthetic data and the demo: view synthesis, the demo route, GSV-format and eval-set generators, bundled photos
and the demo model. Nothing in the library imports this package."""
