"""The codecs are pure: importing them pulls in no web, database or MQTT library."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("litestar", "sqlalchemy", "amqtt", "paho", "aiomqtt", "msgspec", "uvicorn", "httpx")

PROBE = """
import json, sys
before = set(sys.modules)
import iotcloud.codecs
import iotcloud.codecs.datapoints, iotcloud.codecs.errors, iotcloud.codecs.frame, iotcloud.codecs.p0
import iotcloud.codecs.template, iotcloud.codecs.dialects, iotcloud.codecs.mqtt
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_codecs_import_only_the_standard_library() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    imported = json.loads(result.stdout)
    top_level = {name.split(".")[0] for name in imported}

    assert not top_level & set(FORBIDDEN)
    assert top_level - sys.stdlib_module_names <= {"iotcloud"}
