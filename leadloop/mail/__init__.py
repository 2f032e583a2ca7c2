"""What the bytes mean: parsing, screening, reply extraction, MIME building.

Knows nothing of leads or storage.
"""
