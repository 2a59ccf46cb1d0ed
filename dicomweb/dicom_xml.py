"""PS3.19 Native DICOM Model XML (``application/dicom+xml``) from a PS3.18 Annex F JSON object.

Only what small service answers need (the STOW-RS response): string and number values and
sequences. Person names and bulk data are not written: :class:`ValueError` says so rather
than answering something wrong.
"""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree

from pydicom.datadict import keyword_for_tag

NATIVE_DICOM_MODEL = "http://dicom.nema.org/PS3.19/models/NativeDICOM"


def to_native_xml(dataset: dict[str, Any]) -> bytes:
    """``dataset`` (``{"00081190": {"vr": "UR", "Value": [...]}, ...}``) as a UTF-8 document."""
    root = ElementTree.Element("NativeDicomModel", xmlns=NATIVE_DICOM_MODEL)
    _attributes(root, dataset)
    return bytes(ElementTree.tostring(root, encoding="utf-8", xml_declaration=True))


def _attributes(parent: ElementTree.Element, dataset: dict[str, Any]) -> None:
    for tag in sorted(dataset):
        element = dataset[tag]
        vr = str(element["vr"])
        attribute = ElementTree.SubElement(parent, "DicomAttribute", {"tag": tag, "vr": vr})
        keyword = keyword_for_tag(int(tag, 16))
        if keyword:
            attribute.set("keyword", keyword)
        if "InlineBinary" in element or "BulkDataURI" in element or vr == "PN":
            raise ValueError(f"({tag[:4]},{tag[4:]}) {vr}: not written in XML here")
        for number, value in enumerate(element.get("Value", []), start=1):
            if vr == "SQ":
                item = ElementTree.SubElement(attribute, "Item", number=str(number))
                _attributes(item, value)
            else:
                text = ElementTree.SubElement(attribute, "Value", number=str(number))
                text.text = str(value)
