"""The in-cluster controller (see `app.py`); `pd-autoscaler run` enters at `app.main`."""
