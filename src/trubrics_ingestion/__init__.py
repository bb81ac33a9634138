"""trubrics-ingestion: a self-hostable Trubrics Ingestion API that loses no event.

Two paths run through the package. A request: ``ingest`` (HTTP, key check via ``keys``,
decode and limits) hands a valid batch to ``store.journal`` and acknowledges it once it is
on disk, where it stays as the node's store (``store.batches``). Readers and, in the
background, ``forward`` expand stored batches into events (``store.expand``) as they read
them; ``forward`` ships those to PostgreSQL and ClickHouse.
``node`` runs the process around them and ``cli`` is the command line. The command line,
not this module, is the interface: nothing is imported here.
"""

from importlib.metadata import version

__version__ = version("trubrics-ingestion")
__all__ = ["__version__"]
