"""The operator API (``/admin/v1``): products and devices, behind ``IOTCLOUD_ADMIN_TOKEN``.

``routes.ROUTER`` mounts it; ``views`` holds the JSON shapes shared with the CLI's ``--json``.
"""
