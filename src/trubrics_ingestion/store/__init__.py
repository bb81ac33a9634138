"""Durable on this node: the SQLite file, the journal of acknowledged batches (with dedup),
which are the node's store of events, expanded (with ids and the LLM expansion) as they are
read back.
"""
