"""`make demo`: a newcomer's walkthrough of the registry, run for real in under a minute (see __main__)."""
