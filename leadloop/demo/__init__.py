"""``leadloop demo``: the whole loop on loopback servers with simulated
buyers.  ``imap`` runs pymap in this process, ``smtp`` aiosmtpd as the
relay; the tests use the same servers (``tests/imap_servers.py``,
``tests/smtp_servers.py``)."""
