"""Channels move bytes: fetch inbound mail, acknowledge it, file copies.

They know nothing of leads.  Every inbox implements :class:`Inbox`
(``leadloop.channels.base``) and passes the same contract tests.
"""
