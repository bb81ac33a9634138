"""Helpers the tests share: real servers of ours (``node``) and of the engines (``engines``),
their processes (``processes``), and waiting for a condition with a deadline (``waiting``).

Fixtures stay in ``conftest.py``; everything a test imports comes from here.
"""
