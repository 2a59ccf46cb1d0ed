"""PS3.19 Native DICOM Model XML from Annex F JSON, for the small answers that need it."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest

from dicomweb.dicom_xml import NATIVE_DICOM_MODEL, to_native_xml

NS = {"d": NATIVE_DICOM_MODEL}


def test_values_and_sequences_keep_tags_vrs_keywords_and_numbers() -> None:
    xml = to_native_xml({
        "00081199": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": ["1.2.3"]}},
            {"00081155": {"vr": "UI", "Value": ["1.2.4"]}},
        ]},
        "00081190": {"vr": "UR", "Value": ["http://h/dicom-web/studies/1"]},
        "00081197": {"vr": "US", "Value": [49152]},
        "00081196": {"vr": "US"},
    })

    root = ElementTree.fromstring(xml)
    assert xml.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    tags = [a.get("tag") for a in root.findall("d:DicomAttribute", NS)]
    assert tags == ["00081190", "00081196", "00081197", "00081199"]  # ascending, as PS3.19
    url = root.find("d:DicomAttribute[@keyword='RetrieveURL']/d:Value[@number='1']", NS)
    assert url is not None and url.text == "http://h/dicom-web/studies/1"
    items = root.findall("d:DicomAttribute[@tag='00081199']/d:Item", NS)
    assert [i.get("number") for i in items] == ["1", "2"]
    assert [i.find("d:DicomAttribute/d:Value", NS).text for i in items] == ["1.2.3", "1.2.4"]
    empty = root.find("d:DicomAttribute[@tag='00081196']", NS)
    assert empty is not None and list(empty) == [] and empty.get("vr") == "US"


@pytest.mark.parametrize("element", [
    {"vr": "PN", "Value": [{"Alphabetic": "DOE^J"}]},
    {"vr": "OB", "InlineBinary": "AAAA"},
    {"vr": "OB", "BulkDataURI": "http://h/b"},
])
def test_person_names_and_binary_values_are_refused(element: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="not written in XML"):
        to_native_xml({"00100010": element})
