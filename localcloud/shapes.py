"""Values of botocore shapes on the wire: JSON members, XML elements, header/query/path text, timestamps.

The protocols (protocols.py) frame requests and responses; this is how each member's value is written
and read inside them, under boto3's member names on our side and the model's wire names on the wire.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import xml.etree.ElementTree as ET
from typing import Any

import botocore.model

from localcloud.wire import ServiceError

Shape = botocore.model.Shape


# --- timestamps --------------------------------------------------------------------------------


def to_datetime(value: dt.datetime | float | int) -> dt.datetime:
    """A UTC datetime from a datetime (naive means UTC) or epoch seconds."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(value, dt.UTC)


def format_timestamp(value: dt.datetime | float | int, style: str) -> str | float:
    moment = to_datetime(value).astimezone(dt.UTC)
    if style == "iso8601":
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    if style == "rfc822":
        return email.utils.format_datetime(moment, usegmt=True)
    return round(moment.timestamp(), 3)


def parse_timestamp(text: str | float | int) -> dt.datetime:
    """Epoch seconds, ISO 8601 or RFC 822, as AWS clients send them."""
    if isinstance(text, int | float):
        return to_datetime(text)
    try:
        return to_datetime(float(text))
    except ValueError:
        pass
    try:
        return to_datetime(dt.datetime.fromisoformat(text))
    except ValueError:
        pass
    try:
        return to_datetime(email.utils.parsedate_to_datetime(text))
    except (TypeError, ValueError):
        raise ValueError(f"not a timestamp: {text!r}") from None


# --- shapes <-> JSON and XML -------------------------------------------------------------------


def member_shape(shape: Shape, key: str) -> Shape:
    try:
        return shape.members[key]
    except KeyError:
        # A handler returned a field the model does not have: a bug to fix, not to hide.
        raise TypeError(f"{key!r} is not a member of {shape.name}") from None


def wire_name(member: Shape, key: str) -> str:
    return member.serialization.get("name", key)


def to_wire_json(shape: Shape, value: Any, timestamps: str = "unixtimestamp") -> Any:
    """A boto3-shaped value as the JSON document the wire carries (wire names, base64 blobs, timestamps)."""
    kind = shape.type_name
    if kind == "structure" and not getattr(shape, "is_document_type", False):
        out = {}
        for key, item in value.items():
            if item is not None:
                member = member_shape(shape, key)
                out[wire_name(member, key)] = to_wire_json(member, item, timestamps)
        return out
    if kind == "list":
        return [to_wire_json(shape.member, item, timestamps) for item in value]
    if kind == "map":
        return {key: to_wire_json(shape.value, item, timestamps) for key, item in value.items()}
    if kind == "blob":
        return base64.b64encode(value).decode()
    if kind == "timestamp":
        return format_timestamp(value, shape.serialization.get("timestampFormat", timestamps))
    return value


def from_wire_json(shape: Shape, value: Any) -> Any:
    """The inverse of to_wire_json; members the model does not know are dropped, as AWS does."""
    kind = shape.type_name
    if kind == "structure" and not getattr(shape, "is_document_type", False):
        if not isinstance(value, dict):
            raise ServiceError("SerializationException", f"expected an object for {shape.name}")
        by_wire = {wire_name(member, key): (key, member) for key, member in shape.members.items()}
        return {
            by_wire[name][0]: from_wire_json(by_wire[name][1], item)
            for name, item in value.items()
            if name in by_wire and item is not None
        }
    if kind == "list":
        if not isinstance(value, list):
            raise ServiceError("SerializationException", f"expected a list for {shape.name}")
        return [from_wire_json(shape.member, item) for item in value]
    if kind == "map":
        if not isinstance(value, dict):
            raise ServiceError("SerializationException", f"expected an object for {shape.name}")
        return {key: from_wire_json(shape.value, item) for key, item in value.items()}
    if kind == "blob":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError):
            raise ServiceError("SerializationException", f"{shape.name} must be base64-encoded") from None
    if kind == "timestamp":
        try:
            return parse_timestamp(value)
        except ValueError as error:
            raise ServiceError("SerializationException", str(error)) from None
    return value


def _xml_name(member: Shape, key: str) -> str:
    # botocore names the items of a flattened list after the list's member shape when it has a name.
    if member.type_name == "list" and member.serialization.get("flattened"):
        item_name = member.member.serialization.get("name")
        if item_name:
            return item_name
    return wire_name(member, key)


def _xml_text(shape: Shape, value: Any) -> str:
    kind = shape.type_name
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "timestamp":
        return str(format_timestamp(value, shape.serialization.get("timestampFormat", "iso8601")))
    if kind == "blob":
        return base64.b64encode(value).decode()
    return str(value)


def fill_xml(element: ET.Element, shape: Shape, value: Any) -> None:
    if shape.type_name != "structure":
        element.text = _xml_text(shape, value)
        return
    for key, item in value.items():
        if item is None:
            continue
        member = member_shape(shape, key)
        if member.serialization.get("xmlAttribute"):
            element.set(wire_name(member, key), _xml_text(member, item))
        else:
            _append_xml(element, member, item, _xml_name(member, key))


def _append_xml(parent: ET.Element, shape: Shape, value: Any, name: str) -> None:
    if shape.type_name == "list":
        if shape.serialization.get("flattened"):
            for item in value:
                _append_xml(parent, shape.member, item, name)
        else:
            wrapper = ET.SubElement(parent, name)
            item_name = shape.member.serialization.get("name", "member")
            for item in value:
                _append_xml(wrapper, shape.member, item, item_name)
    elif shape.type_name == "map":
        wrapper = parent if shape.serialization.get("flattened") else ET.SubElement(parent, name)
        for key, item in value.items():
            entry = ET.SubElement(wrapper, name if shape.serialization.get("flattened") else "entry")
            ET.SubElement(entry, shape.key.serialization.get("name", "key")).text = str(key)
            _append_xml(entry, shape.value, item, shape.value.serialization.get("name", "value"))
    else:
        fill_xml(ET.SubElement(parent, name), shape, value)


XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def xml_root(name: str, namespace: str | None) -> ET.Element:
    return ET.Element(name, xmlns=namespace) if namespace else ET.Element(name)


def to_xml(shape: Shape, value: dict[str, Any], root: str, namespace: str | None = None) -> bytes:
    element = xml_root(root, namespace)
    fill_xml(element, shape, value)
    return XML_DECLARATION + ET.tostring(element)


def parse_xml(raw: bytes) -> ET.Element:
    # Entity declarations are how XML bombs and external-entity reads start; AWS APIs never need them.
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise ServiceError("MalformedXML", "XML documents with DOCTYPE or ENTITY declarations are refused")
    try:
        # DOCTYPE/ENTITY are refused above and expat resolves no external entities.
        return ET.fromstring(raw)  # noqa: S314
    except ET.ParseError as error:
        raise ServiceError("MalformedXML", f"The XML you provided was not well-formed: {error}") from None


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def from_xml(shape: Shape, element: ET.Element) -> Any:
    kind = shape.type_name
    if kind == "structure":
        children: dict[str, list[ET.Element]] = {}
        for child in element:
            children.setdefault(_local_name(child.tag), []).append(child)
        out = {}
        for key, member in shape.members.items():
            nodes = children.get(_xml_name(member, key))
            if member.serialization.get("location") or not nodes:
                continue
            if member.type_name == "list" and member.serialization.get("flattened"):
                out[key] = [from_xml(member.member, node) for node in nodes]
            else:
                out[key] = from_xml(member, nodes[0])
        return out
    if kind == "list":
        item_name = shape.member.serialization.get("name", "member")
        return [from_xml(shape.member, child) for child in element if _local_name(child.tag) == item_name]
    return from_text(shape, element.text or "")


def from_text(shape: Shape, text: str) -> Any:
    """A scalar from a header, query string or XML text, converted to the member's type."""
    kind = shape.type_name
    try:
        if kind in ("integer", "long"):
            return int(text)
        if kind in ("float", "double"):
            return float(text)
        if kind == "timestamp":
            return parse_timestamp(text)
    except ValueError:
        raise ServiceError("InvalidArgument", f"{shape.name} must be a {kind}, got {text!r}") from None
    if kind == "boolean":
        return text.strip().lower() == "true"
    if kind == "blob":
        return base64.b64decode(text)
    if kind == "list":
        return [from_text(shape.member, item.strip()) for item in text.split(",")]
    return text
