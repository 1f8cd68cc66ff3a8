"""Several servers around one database: the node registry and the events they share."""
