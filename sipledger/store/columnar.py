"""One INSERT of whole columns, done the same way into a ClickHouse server and into chDB.

The values travel as a table of columns numpy holds natively: strings, integers of the column's
own width, Decimal as int64 units, and a UInt8 null flag beside each Nullable column that has
NULLs. One ``INSERT INTO t (...) SELECT ... FROM <that table>`` turns them into the table's types
on the server: a flag back into NULL, units into Decimal by an exact integer division, Enum
codes (named here from the type) and strings into Enum and LowCardinality by the INSERT's own
conversion. In clickhouse-driver's numpy mode a numeric column is encoded as one byte copy and
strings in one C loop, where the driver's generic columns run Python for every value (Decimal,
Enum); chDB's ``Python()`` reads the same arrays from the DataFrame's buffers.

The server names the table's types (``system.columns``), so integers travel in exactly the
column's width: a value that does not fit is refused here instead of being wrapped by a cast.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from .parse import money_column_to_units, without_nulls

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True, slots=True)
class Units:
    """A Decimal column as exact integers: each of ``values`` (int64, masked where NULL) counts
    10**-scale, e.g. money in micro-units at scale 6."""

    values: np.ndarray
    scale: int


ColumnValues = Sequence[Any] | np.ndarray | Units

_INTS = {f"{sign}Int{bits}": np.dtype(f"{sign.lower()}int{bits}")
         for sign in ("", "U") for bits in (8, 16, 32, 64)}
_DECIMAL = re.compile(r"Decimal(?:\((\d+),\s*(\d+)\)|(32|64|128|256)\((\d+)\))")
_DECIMAL_PRECISION = {"32": 9, "64": 18, "128": 38, "256": 76}
_ENUM = re.compile(r"Enum(8|16)\((.*)\)")
_ENUM_ITEM = re.compile(r"'((?:[^'\\]|\\.)*)'\s*=\s*(-?\d+)")
_NULL_FLAG = "{}__null"


@dataclass(frozen=True, slots=True)
class _Kind:
    """How one table column travels: as strings, integers of ``dtype``, Enum codes or Decimal units."""

    name: str  # "string" | "int" | "enum" | "decimal"
    wire_type: str
    nullable: bool
    dtype: np.dtype | None = None
    precision: int = 0
    scale: int = 0
    codes: dict[str, int] = field(default_factory=dict)  # an Enum's names -> values


@lru_cache(maxsize=256)
def _kind(ch_type: str) -> _Kind:
    t = ch_type[len("LowCardinality("):-1] if ch_type.startswith("LowCardinality(") else ch_type
    nullable = t.startswith("Nullable(")
    if nullable:
        t = t[len("Nullable("):-1]
    if t == "String" or t.startswith("FixedString("):
        return _Kind("string", "String", nullable)
    m = _ENUM.fullmatch(t)
    if m:
        # Codes, not names: a byte a value on the wire instead of a string to encode and look up.
        codes = {re.sub(r"\\(.)", r"\1", name): int(code) for name, code in _ENUM_ITEM.findall(m[2])}
        return _Kind("enum", f"Int{m[1]}", nullable, np.dtype(f"int{m[1]}"), codes=codes)
    if t in _INTS:
        return _Kind("int", t, nullable, _INTS[t])
    m = _DECIMAL.fullmatch(t)
    if m:
        precision = int(m[1]) if m[1] else _DECIMAL_PRECISION[m[3]]
        if precision <= 18:  # units of up to 18 digits are exact in Int64
            return _Kind("decimal", "Int64", nullable, precision=precision, scale=int(m[2] or m[4]))
    raise ValueError(f"no columnar insert for a column of type {ch_type}")


@dataclass(slots=True)
class Batch:
    """The wire table of one insert and the SELECT that reads it into the target table."""

    rows: int
    structure: list[tuple[str, str]]  # wire columns: (name, ClickHouse type)
    arrays: dict[str, np.ndarray | Sequence[Any]]  # strings stay the caller's sequence
    columns: list[str]  # the table's columns written, in order
    select: list[str]  # for each of them, the expression over the wire columns
    plain: bool = True  # every wire column is a table column as it is: nothing to convert

    def frame(self) -> pd.DataFrame:
        import pandas as pd  # slow to import: only where rows are written

        # Object dtype said explicitly: pandas 3 would turn the strings into Arrow strings, which
        # clickhouse-driver and chDB both turn back into Python objects, at a cost per value.
        series = {name: pd.Series(a, dtype=a.dtype if isinstance(a, np.ndarray) else object, copy=False)
                  for name, a in self.arrays.items()}
        return pd.DataFrame(series, copy=False)

    def insert_sql(self, table: str, source: str, settings: Mapping[str, int] | None = None) -> str:
        columns = ", ".join(f"`{c}`" for c in self.columns)
        sql = f"INSERT INTO `{table}` ({columns}) SELECT {', '.join(self.select)} FROM {source}"
        if settings:
            sql += " SETTINGS " + ", ".join(f"{k} = {v}" for k, v in settings.items())
        return sql


def build_batch(table: str, types: Mapping[str, str], columns: Mapping[str, ColumnValues]) -> Batch:
    """``columns`` (table column -> values) as a wire batch for ``table``, whose types are ``types``."""
    lengths = {name: len(v.values if isinstance(v, Units) else v) for name, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns of different lengths for {table}: {lengths}")
    batch = Batch(next(iter(lengths.values()), 0), [], {}, [], [])
    for name, values in columns.items():
        kind = _kind(types[name])
        if kind.name == "string":
            data, nulls = _strings(values)
            expr = f"`{name}`"
        elif kind.name == "int":
            data, nulls = _ints(name, values, kind)
            expr = f"`{name}`"
        elif kind.name == "enum":
            data, nulls = _enum_codes(name, values, kind)
            expr = f"`{name}`"
        else:
            data, nulls = _units(name, values, kind)
            expr = f"toDecimal128(`{name}`, {kind.scale}) / {10**kind.scale}"
        if nulls is not None:
            if not kind.nullable:
                raise ValueError(f"{table}.{name} is not Nullable, but row {int(np.argmax(nulls))} is None")
            flag = _NULL_FLAG.format(name)
            if flag in types:
                raise ValueError(f"{table} has a column {flag!r}: the name of {name!r}'s null flag")
            batch.structure.append((flag, "UInt8"))
            batch.arrays[flag] = nulls.view(np.uint8)
            expr = f"if(`{flag}`, NULL, {expr})"
        batch.structure.append((name, kind.wire_type))
        batch.arrays[name] = data
        batch.columns.append(name)
        batch.select.append(expr)
        batch.plain &= nulls is None and kind.wire_type == types[name]
    return batch


def _nulls_of(values: Any, fill: Any = 0) -> tuple[Any, np.ndarray | None]:
    """(values with None replaced by ``fill``, mask of the None values), or (values, None) if none."""
    if isinstance(values, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(values)
        return values.data, (mask if mask.any() else None)
    if isinstance(values, np.ndarray) and values.dtype != object:
        return values, None
    return without_nulls(values, fill)


def _strings(values: ColumnValues) -> tuple[np.ndarray | Sequence[Any], np.ndarray | None]:
    if None not in values:  # as they are: each reader takes a sequence of str
        return values, None
    data = np.array(values, dtype=object)
    nulls = np.equal(data, None)
    data[nulls] = ""
    return data, nulls


def _ints(name: str, values: ColumnValues, kind: _Kind) -> tuple[np.ndarray, np.ndarray | None]:
    # Most columns hold no None: numpy's own type inference says so, without a scan for None first.
    data = None if isinstance(values, np.ma.MaskedArray) else np.asarray(values)
    nulls = None
    if data is None or data.dtype == object:  # a mask, or None among the values: fill, infer again
        filled, nulls = _nulls_of(values)
        data = np.asarray(filled)
    # Only integers (and bools as 0/1): numpy would silently truncate floats and parse strings.
    if data.dtype.kind not in "iub":
        raise TypeError(f"{name}: expected integers for {kind.wire_type}, got {data.dtype} values")
    assert kind.dtype is not None
    if data.size and data.dtype != kind.dtype:
        info = np.iinfo(kind.dtype)
        low, high = int(data.min()), int(data.max())
        if low < info.min or high > info.max:
            raise ValueError(f"{name}: {low if low < info.min else high} does not fit {kind.wire_type}")
    return data.astype(kind.dtype, copy=False), nulls


def _enum_codes(name: str, values: ColumnValues, kind: _Kind) -> tuple[np.ndarray, np.ndarray | None]:
    filled, nulls = _nulls_of(values, fill=next(iter(kind.codes)))
    try:
        codes = np.fromiter(map(kind.codes.__getitem__, filled), dtype=kind.dtype, count=len(filled))
    except KeyError as exc:
        raise ValueError(f"{name}: {exc.args[0]!r} is none of {', '.join(kind.codes)}") from None
    return codes, nulls


def _units(name: str, values: ColumnValues, kind: _Kind) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(values, Units):
        units, nulls = _nulls_of(values.values)
        units = np.asarray(units)
        if units.dtype.kind not in "iu":  # a float would carry money inexactly
            raise TypeError(f"{name}: Units must be integers, not {units.dtype}")
        units = units.astype(np.int64, copy=False)
        if values.scale < kind.scale:
            factor = 10 ** (kind.scale - values.scale)
            _check_range(name, units, 10**kind.precision // factor, kind)
            units = units * factor
        elif values.scale > kind.scale:
            units, rest = np.divmod(units, 10 ** (values.scale - kind.scale))
            if rest.any():
                raise ValueError(f"{name}: a value has more than {kind.scale} decimals")
    else:
        units, nulls = _nulls_of(money_column_to_units(values, kind.scale))
    _check_range(name, units, 10**kind.precision, kind)
    return units, nulls


def _check_range(name: str, units: np.ndarray, limit: int, kind: _Kind) -> None:
    outside = (units <= -limit) | (units >= limit)
    if outside.any():
        value = int(units[np.argmax(outside)])
        raise ValueError(f"{name}: {value} units at scale {kind.scale} do not fit Decimal({kind.precision}, "
                         f"{kind.scale})")
