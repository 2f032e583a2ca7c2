"""Approved knowledge: documents and the catalog cut into passages with stable
ids, and BM25 retrieval over them (``index.py``)."""
