"""Pure codecs for device wire formats (standard library only: no web, database or MQTT code).

Gizwits: `frame` (the ``00000003`` frame), `datapoints` (product datapoint JSON) and `p0` (the P0
data protocol, standard and var_len). Tencent: `template` (data templates and their values).
`dialects` converts values between the two.
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
from iotcloud.codecs.dialects import (
    datapoints_to_template,
    gizwits_to_template,
    template_to_datapoints,
    template_to_gizwits,
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
from iotcloud.codecs.template import (
    DATA_TEMPLATE_PROTOCOL,
    DataTemplate,
    TemplateAction,
    TemplateDefinitionError,
    TemplateEvent,
    TemplateField,
    TemplateProperty,
    TemplateValueError,
    is_data_template,
    load_data_template,
    parse_data_template,
)

__all__ = [
    "DATA_TEMPLATE_PROTOCOL",
    "Action",
    "Attr",
    "AttrType",
    "CodecError",
    "DataTemplate",
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
    "TemplateAction",
    "TemplateDefinitionError",
    "TemplateEvent",
    "TemplateField",
    "TemplateProperty",
    "TemplateValueError",
    "UintSpec",
    "datapoints_to_template",
    "decode_frame",
    "decode_varint",
    "encode_frame",
    "encode_varint",
    "gizwits_to_template",
    "is_data_template",
    "load_data_template",
    "load_product_definition",
    "parse_data_template",
    "parse_product_definition",
    "template_to_datapoints",
    "template_to_gizwits",
]
