"""The Gizwits Open API dialect (``/app/...``, ``/dev/...``, ``/ws/app/v1``)."""
