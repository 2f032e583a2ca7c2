"""Decisions: the lead lifecycle, the message pipeline, due work, and (in later
issues) threading, understanding, policy, qualification and cadence."""
