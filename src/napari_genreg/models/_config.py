"""Reading a model configuration back from its JSON form, shared by every model's config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any


def config_fields(cls: type, data: Mapping[str, Any], architecture: str) -> dict[str, Any]:
    """The dataclass fields of ``cls`` in ``data`` (a dict written by ``to_dict``).

    Raises
    ------
    ValueError
        If ``data`` is not a mapping, names another architecture than ``architecture``, lacks a
        field or has an unknown one.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"a model configuration must be a JSON object, got {type(data)}")
    data = dict(data)
    found = data.pop("architecture", None)
    if found != architecture:
        raise ValueError(
            f"unknown model architecture {found!r}; this version builds {architecture!r}"
        )
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    missing = sorted(names - set(data))
    if unknown or missing:
        problems = [f"unknown fields {unknown}"] * bool(unknown)
        problems += [f"missing fields {missing}"] * bool(missing)
        raise ValueError(
            "the model configuration does not match this version: " + "; ".join(problems)
        )
    return data
