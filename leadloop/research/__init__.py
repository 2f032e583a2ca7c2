"""Research mode (seed 003): what is known about a lead and its company, and
what a seller should do about it.  ``facts.py`` gathers research from our own
data, ``providers.py`` is the interface for outside sources and
``website.py`` the one that ships; ``priority.py`` and ``actions.py`` rank
leads and suggest the next action."""
