"""Durable on this node: the SQLite file, the journal of acknowledged batches (with dedup),
their materialisation into event rows (with ids and the LLM expansion), and reading them back.
"""
