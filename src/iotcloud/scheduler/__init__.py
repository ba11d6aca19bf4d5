"""The durable timer engine: schedules and runs in storage, due-claiming with leases, firing
through the control service, retries and run logs (DESIGN.md "Scheduling semantics").

`policy` holds the rules as pure functions, `store` the SQL, `engine` the loop;
`iotcloud.services.scheduler` is what the HTTP dialects call.
"""
