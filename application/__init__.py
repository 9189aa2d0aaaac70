"""Use cases of the ledger: eventsourcing Applications, commands, queries and the write path.

Imports `domain`; talks to storage only through the eventsourcing Application and the small
ports in `application.ports`, which `infrastructure` implements.
"""
