"""Export the mission dictionary's telemetry packets as XTCE (CCSDS 660.1 / OMG XTCE 1.2).

    python -m ground_link.xtce > mission.xtce.xml

Every TM product packet becomes a SequenceContainer: the CCSDS primary header, the PUS-C TM
secondary header (CDS short time code as day + millisecond of day), the product's fixed fields in
`LAYOUT` order with units taken from the name (`capture_time_s` -> s), the variable tail (if any)
as binary sized from the packet length, and the CRC-16. Containers are chosen by a restriction on
the APID, so another ground system (Yamcs, space_packet_parser, ...) decodes our packets from this
file alone. Parameter names are `<APID name>.<field>` with the dot written as `__`
(`DETECTION__lat_deg`), because XTCE names may not contain dots.
"""

from __future__ import annotations

import dataclasses
import struct
import sys
import xml.etree.ElementTree as ET

from flight.dictionary import TIMESTAMP_LEN, Apid
from flight.products import PRODUCT_TYPES, _Product

NS = "http://www.omg.org/spec/XTCE/20180204"
XSD = "https://www.omg.org/spec/XTCE/20180204/SpaceSystem.xsd"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
SPACE_SYSTEM = "onboard-payload"
PRIMARY_HEADER = (  # (name, bits, description): CCSDS 133.0-B-2
    ("VERSION", 3, "CCSDS packet version number (0)"),
    ("TYPE", 1, "packet type: 0 telemetry, 1 telecommand"),
    ("SEC_HDR_FLG", 1, "secondary header flag"),
    ("PKT_APID", 11, "application process identifier"),
    ("SEQ_FLGS", 2, "sequence flags (3: unsegmented)"),
    ("SRC_SEQ_CTR", 14, "source sequence count, per APID"),
    ("PKT_LEN", 16, "packet data length minus one, bytes"),
)
SECONDARY_HEADER = (  # ECSS-E-ST-70-41C (PUS-C) TM secondary header with a CDS short time code
# (P-field + T-field, TIMESTAMP_LEN bytes)
    ("PUS_VERSION", 4, "PUS version (2: PUS-C)", None),
    ("SC_TIME_REF", 4, "spacecraft time reference status", None),
    ("SERVICE", 8, "PUS service type", None),
    ("SUBTYPE", 8, "PUS message subtype", None),
    ("MSG_COUNTER", 16, "message type counter", None),
    ("DEST_ID", 16, "destination id", None),
    ("CDS_PFIELD", 8, "CDS time code preamble (P-field, 0x40: CDS, 16-bit days, ms)", None),
    ("CDS_DAYS", 16, "CDS short time code: days since 1958-01-01", "day"),
    ("CDS_MS_OF_DAY", 32, "CDS short time code: milliseconds of day", "ms"),
)
PRIMARY_BYTES = 6
SECONDARY_BYTES = 7 + TIMESTAMP_LEN
CRC_BYTES = 2
STRUCT_TYPES = {"B": ("u", 8), "H": ("u", 16), "I": ("u", 32), "Q": ("u", 64), "b": ("s", 8), "h": ("s", 16),
                "i": ("s", 32), "q": ("s", 64), "f": ("f", 32), "d": ("f", 64)}
UNITS = {"s": "s", "ms": "ms", "deg": "deg", "px": "px", "m": "m", "km": "km", "mib": "MiB", "bps": "bit/s"}


def parameter_name(cls: type[_Product], field: str) -> str:
    return f"{Apid(cls.APID).name}__{field}"


def unit_of(field: str) -> str | None:
    """Units live in names: the last `_word` when it is a unit."""
    suffix = field.rsplit("_", 1)[-1] if "_" in field else ""
    return UNITS.get(suffix)


def fixed_fields(cls: type[_Product]) -> list[tuple[str, str]]:
    """(field name, struct code) of the fixed part, in packing order."""
    names = [f.name for f in dataclasses.fields(cls) if f.name != cls.TAIL]
    codes = [c for c in cls.LAYOUT.lstrip("<>!=@") if not c.isdigit()]
    if len(codes) != len(names) or cls.LAYOUT[0] not in ">!":
        raise ValueError(f"{cls.__name__}: LAYOUT {cls.LAYOUT!r} does not map one big-endian code per field")
    return list(zip(names, codes, strict=True))


class _Doc:
    def __init__(self):
        ET.register_namespace("xtce", NS)
        ET.register_namespace("xsi", XSI)
        self.root = ET.Element(self.q("SpaceSystem"), {f"{{{XSI}}}schemaLocation": f"{NS} {XSD}"}, name=SPACE_SYSTEM)
        # no date: the export of one dictionary is byte-for-byte the same every time
        ET.SubElement(self.root, self.q("Header"), version="1", validationStatus="Working")
        tm = ET.SubElement(self.root, self.q("TelemetryMetaData"))
        self.types = ET.SubElement(tm, self.q("ParameterTypeSet"))
        self.params = ET.SubElement(tm, self.q("ParameterSet"))
        self.containers = ET.SubElement(tm, self.q("ContainerSet"))

    @staticmethod
    def q(tag: str) -> str:
        return f"{{{NS}}}{tag}"

    def _units(self, parent: ET.Element, unit: str | None) -> None:
        units = ET.SubElement(parent, self.q("UnitSet"))
        if unit:
            ET.SubElement(units, self.q("Unit")).text = unit

    def number(self, name: str, kind: str, bits: int, unit: str | None, description: str) -> str:
        type_name = f"{name}_Type"
        if kind == "f":
            t = ET.SubElement(self.types, self.q("FloatParameterType"), name=type_name, sizeInBits=str(bits))
            self._units(t, unit)
            ET.SubElement(t, self.q("FloatDataEncoding"), sizeInBits=str(bits), encoding="IEEE754_1985")
        else:
            t = ET.SubElement(self.types, self.q("IntegerParameterType"), name=type_name, signed=str(kind == "s").lower(),
                              sizeInBits=str(bits))
            self._units(t, unit)
            ET.SubElement(t, self.q("IntegerDataEncoding"), sizeInBits=str(bits),
                          encoding="twosComplement" if kind == "s" else "unsigned")
        return self.parameter(name, type_name, description)

    def binary_tail(self, name: str, fixed_bytes: int, description: str) -> str:
        """Binary field filling the packet up to the CRC: size = 8 * (PKT_LEN + 1 - everything else)."""
        type_name = f"{name}_Type"
        t = ET.SubElement(self.types, self.q("BinaryParameterType"), name=type_name)
        self._units(t, None)
        enc = ET.SubElement(t, self.q("BinaryDataEncoding"))
        dyn = ET.SubElement(ET.SubElement(enc, self.q("SizeInBits")), self.q("DynamicValue"))
        ET.SubElement(dyn, self.q("ParameterInstanceRef"), parameterRef="PKT_LEN", useCalibratedValue="false")
        other = SECONDARY_BYTES + fixed_bytes + CRC_BYTES
        ET.SubElement(dyn, self.q("LinearAdjustment"), slope="8", intercept=str(8 * (1 - other)))
        return self.parameter(name, type_name, description)

    def parameter(self, name: str, type_name: str, description: str) -> str:
        ET.SubElement(self.params, self.q("Parameter"), name=name, parameterTypeRef=type_name,
                      shortDescription=description[:80])
        return name

    def container(self, name: str, entries: list[str], description: str, abstract: bool = False,
                  base: str | None = None, restrictions: tuple[tuple[str, int], ...] = ()) -> None:
        c = ET.SubElement(self.containers, self.q("SequenceContainer"), name=name, shortDescription=description[:80])
        if abstract:
            c.set("abstract", "true")
        entry_list = ET.SubElement(c, self.q("EntryList"))
        for e in entries:
            ET.SubElement(entry_list, self.q("ParameterRefEntry"), parameterRef=e)
        if base:
            b = ET.SubElement(c, self.q("BaseContainer"), containerRef=base)
            if restrictions:
                crit = ET.SubElement(ET.SubElement(b, self.q("RestrictionCriteria")), self.q("ComparisonList"))
                for ref, value in restrictions:
                    ET.SubElement(crit, self.q("Comparison"), parameterRef=ref, value=str(value),
                                  useCalibratedValue="false")


def export() -> bytes:
    """The XTCE document (UTF-8 bytes with an XML declaration)."""
    doc = _Doc()
    header = [doc.number(n, "u", bits, None, d) for n, bits, d in PRIMARY_HEADER]
    doc.container("CCSDSPacket", header, "CCSDS space packet primary header", abstract=True)
    secondary = [doc.number(n, "u", bits, unit, d) for n, bits, d, unit in SECONDARY_HEADER]
    doc.container("PusTmPacket", secondary, "ECSS PUS-C telemetry packet with CDS short time", abstract=True,
                  base="CCSDSPacket", restrictions=(("TYPE", 0), ("SEC_HDR_FLG", 1)))
    for apid, cls in sorted(PRODUCT_TYPES.items()):
        summary = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
        entries = []
        for field, code in fixed_fields(cls):
            kind, bits = STRUCT_TYPES[code]
            entries.append(doc.number(parameter_name(cls, field), kind, bits, unit_of(field), f"{cls.__name__}.{field}"))
        if cls.TAIL is not None:
            entries.append(doc.binary_tail(parameter_name(cls, cls.TAIL), struct.calcsize(cls.LAYOUT),
                                           f"{cls.__name__}.{cls.TAIL}: variable length, to the CRC"))
        entries.append(doc.number(parameter_name(cls, "crc16"), "u", 16, None, "CRC-16/CCITT-FALSE of the packet"))
        doc.container(cls.__name__, entries, f"APID {apid:#x}: {summary}", base="PusTmPacket",
                      restrictions=(("PKT_APID", int(apid)),))
    ET.indent(doc.root)
    return ET.tostring(doc.root, encoding="utf-8", xml_declaration=True) + b"\n"


def main() -> int:
    sys.stdout.buffer.write(export())
    return 0


if __name__ == "__main__":
    sys.exit(main())
