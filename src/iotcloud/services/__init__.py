"""Use cases combining domain rules, storage and the outside world (gateway, notifications)."""
