"""Query side: the search service (and, in later issues, the Redis worker, client, gateway)."""
