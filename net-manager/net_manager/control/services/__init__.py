"""Services as the node knows them: the translation table (service IP -> instances),
which services are in use (interests) and the table queries that fill the table."""
