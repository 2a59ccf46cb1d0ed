"""No GPL or AGPL code in what ``pip install pacs`` brings, nor in the extras the image adds.

pacs is MIT. The distributions a default install pulls in are found by walking the
requirement tree from the installed metadata (``importlib.metadata``), markers evaluated for
this interpreter; each distribution's licence is read from its ``License-Expression`` (SPDX,
PEP 639) or, without one, from its ``License`` field and ``License ::`` classifiers.

- GPL and AGPL fail the test, naming the package: whoever distributes pacs with them would
  have to ship the whole under the GPL. ``pylibjpeg-libjpeg`` (GPLv3) was such a dependency;
  python-gdcm and pyjpegls decode its JPEG and JPEG-LS instead.
- LGPL passes. An LGPL package is imported at run time from its own files in site-packages,
  where a user can replace it with another build (LGPL-3.0 section 4), and pacs does not
  modify it: that is what the LGPL allows under any licence. Today only psycopg (the
  ``postgres`` extra, LGPL-3.0) is LGPL; the image ships it unmodified, with its licence file.
- An SPDX ``OR`` passes when one alternative has no GPL (a dual licence is the user's choice);
  classifiers cannot say *or*, so a GPL classifier fails even beside a permissive one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from email.message import Message
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from typing import Protocol

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

#: The extras the image and ``make test`` install beside the default (pyproject.toml).
IMAGE_EXTRAS = ("postgres", "s3")

# GPL-2.0-only, GPL-3.0-or-later, AGPL-3.0, GPLv3, "GPL V3.0", "GNU General Public License";
# not LGPL-3.0, "GNU Lesser General Public License", "GNU Library or Lesser ..."
_GPL_SPDX = re.compile(r"^A?GPL-", re.IGNORECASE)
_GPL_TEXT = re.compile(
    r"(?<![A-Za-z])A?GPL(?![A-Za-z])|GNU (Affero )?General Public License", re.IGNORECASE
)


class Metadata(Protocol):
    def get(self, name: str, failobj: None = None) -> str | None: ...
    def get_all(self, name: str, failobj: None = None) -> list[str] | None: ...


def requirement_tree(name: str, extras: Iterable[str] = ()) -> dict[str, Distribution]:
    """Every installed distribution that ``pip install NAME[EXTRAS]`` required, by name."""
    found: dict[str, Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo = [(name, extra) for extra in ("", *extras)]
    while todo:
        wanted, extra = todo.pop()
        key = canonicalize_name(wanted)
        if (key, extra) in done:
            continue
        done.add((key, extra))
        try:
            found[key] = found.get(key) or distribution(wanted)
        except PackageNotFoundError:
            raise LookupError(f"{wanted} is required but not installed") from None
        environment = {**default_environment(), "extra": extra}
        for line in found[key].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.extend((requirement.name, sub) for sub in ("", *requirement.extras))
    return found


def gpl_licences(metadata: Metadata) -> list[str]:
    """The GPL or AGPL licences a distribution declares (empty when it has a way out)."""
    expression = metadata.get("License-Expression")
    if expression:
        alternatives = re.split(r"\s+OR\s+", expression.replace("(", " ").replace(")", " "))
        terms = [re.split(r"\s+(?:AND|WITH)\s+", alternative.strip())
                 for alternative in alternatives]
        gpl = [[term for term in alternative if _GPL_SPDX.match(term)] for alternative in terms]
        return [] if any(not found for found in gpl) else sorted({t for f in gpl for t in f})
    declared = [metadata.get("License") or ""]
    declared += [classifier for classifier in metadata.get_all("Classifier") or []
                 if classifier.startswith("License ::")]
    return [text.strip() for text in declared if _GPL_TEXT.search(text)]


def gpl_in(tree: dict[str, Distribution]) -> dict[str, list[str]]:
    found = {name: gpl_licences(dist.metadata) for name, dist in sorted(tree.items())}
    return {name: licences for name, licences in found.items() if licences}


def test_default_install_has_no_gpl() -> None:
    tree = requirement_tree("pacs")
    assert {"pydicom", "pynetdicom", "python-gdcm", "pyjpegls", "sqlalchemy"} <= set(tree)
    assert "pylibjpeg-libjpeg" not in tree
    assert "psycopg" not in tree and "boto3" not in tree  # extras, not the default
    assert gpl_in(tree) == {}, "GPL in the default install (package: licences)"


def test_image_extras_have_no_gpl() -> None:
    try:
        tree = requirement_tree("pacs", IMAGE_EXTRAS)
    except LookupError as missing:
        pytest.skip(f"{missing}: pip install -e '.[{','.join(IMAGE_EXTRAS)}]'")
    assert {"psycopg", "boto3", "botocore"} <= set(tree)
    assert gpl_in(tree) == {}, "GPL in pacs[postgres,s3] (package: licences)"


def _metadata(**fields: str | list[str]) -> Message:
    message = Message()
    for name, value in fields.items():
        for one in [value] if isinstance(value, str) else value:
            message[name.replace("_", "-")] = one
    return message


@pytest.mark.parametrize(
    ("fields", "gpl"),
    [
        # pylibjpeg-libjpeg 2.5's metadata: no expression, a free-text licence and classifiers
        ({"License": "GPL V3.0", "Classifier": [
            "License :: OSI Approved :: GNU General Public License v3 (GPLv3)",
            "License :: Other/Proprietary License"]},
         ["GPL V3.0", "License :: OSI Approved :: GNU General Public License v3 (GPLv3)"]),
        ({"License_Expression": "AGPL-3.0-only"}, ["AGPL-3.0-only"]),
        ({"License_Expression": "MIT AND (GPL-2.0-or-later WITH Classpath-exception-2.0)"},
         ["GPL-2.0-or-later"]),
        ({"License_Expression": "GPL-2.0-only OR BSD-3-Clause"}, []),
        ({"License_Expression": "LGPL-3.0-only"}, []),  # psycopg
        ({"Classifier": "License :: OSI Approved :: GNU Lesser General Public License v3 "
                        "(LGPLv3)"}, []),
        ({"License": "LGPLv3+"}, []),
        ({"License_Expression": "Apache-2.0 OR BSD-3-Clause"}, []),  # cryptography
        ({"License": "Dual License", "Classifier": [  # python-dateutil
            "License :: OSI Approved :: BSD License",
            "License :: OSI Approved :: Apache Software License"]}, []),
    ],
)
def test_what_counts_as_gpl(fields: dict[str, str | list[str]], gpl: list[str]) -> None:
    assert gpl_licences(_metadata(**fields)) == gpl
