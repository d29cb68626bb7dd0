"""Forecasting arrival rates so replicas can be requested one cold start ahead.

- `history`  bounded ring buffers of evenly spaced bins
- `models`   online filters (last value, seasonal naive, Holt, Holt-Winters, ARIMA, SARIMAX with
             daily Fourier terms) whose parameters statsmodels fits; rolling-origin selection
- `engine`   one series end to end: observe -> periodic refit -> upper-quantile forecast
- `refit`    where fits run (inline for the simulator, a worker thread in the controller)
- `backfill` refill history from a Prometheus range query at start-up
- `stitch`   `pd-autoscaler trace stitch`: a multi-day trace from an envelope and real lengths
"""
