"""The ISMRMRD XML header of a raw file: fastMRI's matrix sizes and padding, parsed safely.

The header comes from an untrusted file, so it is parsed with expat under limits
(:data:`MAX_HEADER_BYTES`, :data:`MAX_XML_DEPTH`), with DOCTYPE and ENTITY declarations refused;
only the few elements fastMRI's ``SliceDataset`` reads are kept. The readers of
:mod:`.raw_reader` apply the same size limit to the header bytes before they reach the parser.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import DataError
from ..errors import first_line as _first_line

#: real ISMRMRD headers are a few kB
MAX_HEADER_BYTES = 1 << 20
MAX_XML_DEPTH = 32


def _header_too_large(where: str, n: int) -> DataError:
    return DataError(f"{where}: ismrmrd_header is {n:,} bytes, more than the {MAX_HEADER_BYTES:,} an ISMRMRD header needs",
                     "store a standard ISMRMRD header, or remove it")


_WANTED = {
    ("encoding", "encodedSpace", "matrixSize", "x"), ("encoding", "encodedSpace", "matrixSize", "y"),
    ("encoding", "encodedSpace", "matrixSize", "z"), ("encoding", "reconSpace", "matrixSize", "x"),
    ("encoding", "reconSpace", "matrixSize", "y"), ("encoding", "reconSpace", "matrixSize", "z"),
    ("encoding", "encodingLimits", "kspace_encoding_step_1", "center"),
    ("encoding", "encodingLimits", "kspace_encoding_step_1", "maximum"),
}


def _refuse_dtd(*_args) -> None:
    raise DataError("__dtd__", "")


def _xml_values(text: bytes, where: str) -> dict[tuple[str, ...], str]:
    """Text of the elements in :data:`_WANTED` (first ``encoding`` only), parsed with expat.

    DOCTYPE and ENTITY declarations are refused (no entity is ever expanded and no external
    file is opened), as are documents nested deeper than :data:`MAX_XML_DEPTH`.
    """
    from xml.parsers import expat

    if len(text) > MAX_HEADER_BYTES:
        raise _header_too_large(where, len(text))
    if re.search(rb"<!\s*(DOCTYPE|ENTITY)", text, re.IGNORECASE):
        raise DataError(f"{where}: ismrmrd_header declares a DOCTYPE or ENTITY",
                        "store a plain ISMRMRD header (mbdlprune refuses XML with document type or entity declarations)")
    p = expat.ParserCreate(namespace_separator="}")
    p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    p.StartDoctypeDeclHandler = p.EntityDeclHandler = p.ExternalEntityRefHandler = _refuse_dtd
    stack: list[str] = []
    found: dict[tuple[str, ...], str] = {}
    encodings = [0]

    def start(name, _attrs):
        stack.append(name.rsplit("}", 1)[-1])
        if len(stack) > MAX_XML_DEPTH:
            raise DataError(f"{where}: ismrmrd_header nests deeper than {MAX_XML_DEPTH} elements", "store a standard ISMRMRD header")
        if stack[1:] == ["encoding"]:
            encodings[0] += 1

    def end(_name):
        stack.pop()

    def chars(data):
        path = tuple(stack[1:])
        if encodings[0] == 1 and path in _WANTED:
            found[path] = found.get(path, "") + data

    p.StartElementHandler, p.EndElementHandler, p.CharacterDataHandler = start, end, chars
    try:
        p.Parse(text, True)
    except DataError as e:
        if e.problem == "__dtd__":
            raise DataError(f"{where}: ismrmrd_header declares a DOCTYPE or ENTITY",
                            "store a plain ISMRMRD header (mbdlprune refuses XML with document type or entity declarations)") from None
        raise
    except expat.ExpatError as e:
        raise DataError(f"{where}: ismrmrd_header is not well-formed XML ({_first_line(e, 80)})",
                        "store a standard ISMRMRD header, or remove it") from None
    return found


def parse_ismrmrd_header(text: bytes, where: str = "ismrmrd_header") -> dict[str, Any]:
    """fastMRI's metadata from an ISMRMRD XML header: ``encoding_size``, ``recon_size`` (x, y, z),
    and ``padding_left`` / ``padding_right`` from ``kspace_encoding_step_1``, as its
    ``SliceDataset._retrieve_metadata`` computes them. Missing or non-integer values are left out."""
    values = _xml_values(text, where)

    def number(*path):
        v = values.get(("encoding", *path), "").strip()
        return int(v) if re.fullmatch(r"[0-9]{1,6}", v) else None

    out: dict[str, Any] = {}
    for key, space in (("encoding_size", "encodedSpace"), ("recon_size", "reconSpace")):
        size = tuple(number(space, "matrixSize", a) for a in "xyz")
        if None not in size[:2]:
            out[key] = (size[0], size[1], size[2] if size[2] is not None else 1)
    center = number("encodingLimits", "kspace_encoding_step_1", "center")
    maximum = number("encodingLimits", "kspace_encoding_step_1", "maximum")
    if "encoding_size" in out and center is not None and maximum is not None:
        out["padding_left"] = out["encoding_size"][1] // 2 - center
        out["padding_right"] = out["padding_left"] + maximum + 1
    return out
