"""Pure domain rules: no web, database or MQTT imports."""
