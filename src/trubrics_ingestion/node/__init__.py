"""The process: ``serve`` wires ingest, keys, store and forward together, supervises the
background children, and reports (JSON logs, Prometheus metrics, readiness).
"""
