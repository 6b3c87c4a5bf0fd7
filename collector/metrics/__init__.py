"""Prometheus metrics: the families (one place), counting at ingest, the store exporter behind
``runmeter serve``, and in-process live metrics (``Recorder(..., metrics_port=N)``).

Scrape one or the other, never both: ``runmeter serve`` exports what every process recorded into the
store, live metrics export what one process observed; scraping both counts every run twice.
"""
