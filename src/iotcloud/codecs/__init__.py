"""Pure codecs for device wire formats (standard library only: no web, database or MQTT code).

Gizwits: `frame` (the ``00000003`` frame), `datapoints` (product datapoint JSON) and `p0` (the P0
data protocol, standard and var_len).
"""

from iotcloud.codecs.datapoints import (
    Attr,
    AttrType,
    DataType,
    ProductDefinition,
    ProtocolType,
    UintSpec,
    load_product_definition,
    parse_product_definition,
)
from iotcloud.codecs.errors import (
    CodecError,
    DatapointError,
    FrameError,
    P0Error,
    ProductDefinitionError,
)
from iotcloud.codecs.frame import Frame, decode_frame, decode_varint, encode_frame, encode_varint
from iotcloud.codecs.p0 import Action, P0Codec, P0Message

__all__ = [
    "Action",
    "Attr",
    "AttrType",
    "CodecError",
    "DataType",
    "DatapointError",
    "Frame",
    "FrameError",
    "P0Codec",
    "P0Error",
    "P0Message",
    "ProductDefinition",
    "ProductDefinitionError",
    "ProtocolType",
    "UintSpec",
    "decode_frame",
    "decode_varint",
    "encode_frame",
    "encode_varint",
    "load_product_definition",
    "parse_product_definition",
]
