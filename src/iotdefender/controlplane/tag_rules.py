"""What a caller may tag with: the rules every operation that takes tags applies.

AWS reserves the ``aws:`` prefix of tag keys, in any case, for its own tags ("Tag naming limits and
requirements", AWS Tagging Best Practices; AWS IoT's "Tagging your AWS IoT resources" points to
them): a caller can neither set nor remove such a key. A resource has at most 50 tags.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from iotdefender.contract.errors import invalid_request

MAX_TAGS = 50
RESERVED_PREFIX = "aws:"


def refuse_reserved(keys: Iterable[str]) -> None:
    """InvalidRequestException if a key begins with ``aws:`` (in any case)."""
    reserved = sorted({key for key in keys if key[:len(RESERVED_PREFIX)].lower() == RESERVED_PREFIX})
    if reserved:
        raise invalid_request(f"Tag keys beginning with {RESERVED_PREFIX} are reserved for AWS use: "
                              f"{', '.join(reserved)}")


def refuse_too_many(count: int) -> None:
    """InvalidRequestException if a resource would have more than ``MAX_TAGS`` tags."""
    if count > MAX_TAGS:
        raise invalid_request(f"A resource can have at most {MAX_TAGS} tags")


def checked_tags(tag_list: Sequence[dict[str, str]] | None) -> list[dict[str, str]]:
    """The tags of a create request, refused if too many or reserved."""
    found = list(tag_list or [])
    refuse_too_many(len(found))
    refuse_reserved(tag["Key"] for tag in found)
    return found
