"""The durable timer engine: schedules and runs in storage, due-claiming with leases (a few
seconds ahead), firing through the gateway at the due instant, retries and run logs (DESIGN.md
"Scheduling semantics").

`policy` holds the rules as pure functions, `store` the SQL, `commands` the checking and
encoding of a batch's commands, `engine` the loops; `iotcloud.services.scheduler` is what the
HTTP dialects call.
"""
