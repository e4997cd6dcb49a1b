"""Update masks (AIP-134, AIP-161, AIP-203): which fields an Update changes."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from service.api.validation import Violations
from service.storage.errors import echoed


@dataclass(frozen=True)
class MaskRules:
    """The fields of one resource by behaviour."""

    mutable: frozenset[str]
    immutable: frozenset[str] = frozenset()
    output_only: frozenset[str] = frozenset()


def resolve_update_mask(
    mask: FieldMask, resource: Message, rules: MaskRules, violations: Violations
) -> frozenset[str]:
    """The writable fields to apply; bad paths are added to `violations`.

    An empty mask means the fields set in `resource`; `*` means every mutable
    field; output-only paths are ignored; unknown or indexed paths are invalid.
    """
    writable = rules.mutable | rules.immutable
    if not mask.paths:
        return frozenset(field.name for field, _ in resource.ListFields()) & writable
    if "*" in mask.paths:
        if len(mask.paths) > 1:
            violations.add("update_mask", "`*` cannot be combined with other paths", "INVALID_MASK")
        return rules.mutable | (frozenset(f.name for f, _ in resource.ListFields()) & writable)
    selected: set[str] = set()
    for path in mask.paths:
        if path in writable:
            selected.add(path)
        elif path not in rules.output_only:
            violations.add(
                "update_mask",
                f"unknown or unsupported path {echoed(path)}; "
                f"accepted: {', '.join(sorted(writable))}",
                "INVALID_MASK_PATH",
            )
    return frozenset(selected)
