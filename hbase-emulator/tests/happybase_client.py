"""A standard third-party HBase client, happybase (buffered transport, binary protocol by
default, as against `hbase thrift start`), against the emulator.

Usage: python happybase_client.py HOST PORT [buffered|framed] [binary|compact]
Exits non-zero with a traceback on the first check that fails; prints
"happybase: all checks passed" at the end.
"""

import struct
import sys

import happybase

# happybase loads HBase's IDL as the module Hbase_thrift; its exceptions live there.
from Hbase_thrift import AlreadyExists, IOError as HbaseIOError  # noqa: E402


def check(actual, expected, what):
    if actual != expected:
        raise AssertionError("%s: expected %r, got %r" % (what, expected, actual))


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    transport = sys.argv[3] if len(sys.argv) > 3 else "buffered"
    protocol = sys.argv[4] if len(sys.argv) > 4 else "binary"
    conn = happybase.Connection(host=host, port=port, timeout=60000, transport=transport, protocol=protocol)

    # create_table / tables / families
    conn.create_table("events", {"cf": dict(max_versions=2), "meta": dict(time_to_live=3600)})
    check(conn.tables(), [b"events"], "tables()")
    check(conn.is_table_enabled("events"), True, "is_table_enabled")
    try:
        conn.create_table("events", {"cf": dict()})
        raise AssertionError("creating an existing table must fail")
    except AlreadyExists:
        pass
    table = conn.table("events")
    families = table.families()
    check(sorted(families), [b"cf", b"meta"], "families() names")
    check(families[b"cf"]["max_versions"], 2, "cf max_versions")
    check(families[b"meta"]["time_to_live"], 3600, "meta time_to_live")
    check(families[b"cf"]["name"], b"cf:", "descriptor name")

    # put / row / cells (versions)
    table.put(b"row1", {b"cf:a": b"1", b"cf:b": b"2", b"meta:m": b"x"})
    check(table.row(b"row1"), {b"cf:a": b"1", b"cf:b": b"2", b"meta:m": b"x"}, "row()")
    check(table.row(b"row1", columns=[b"cf"]), {b"cf:a": b"1", b"cf:b": b"2"}, "row(columns=family)")
    table.put(b"v", {b"cf:q": b"old"}, timestamp=1000)
    table.put(b"v", {b"cf:q": b"mid"}, timestamp=2000)
    table.put(b"v", {b"cf:q": b"new"}, timestamp=3000)
    check(
        table.cells(b"v", b"cf:q", versions=5, include_timestamp=True),
        [(b"new", 3000), (b"mid", 2000)],
        "cells(): newest first, capped at max_versions=2",
    )
    check(table.row(b"v", timestamp=3000), {b"cf:q": b"mid"}, "row(timestamp) is exclusive")

    # batch: puts and deletes sent as mutateRows
    with table.batch(batch_size=37) as b:
        for i in range(100):
            b.put(b"user|%03d" % i, {b"cf:n": str(i).encode(), b"meta:m": b"m"})
        b.delete(b"row1", columns=[b"cf:b"])
    check(table.row(b"user|042"), {b"cf:n": b"42", b"meta:m": b"m"}, "batch put")
    check(table.row(b"row1"), {b"cf:a": b"1", b"meta:m": b"x"}, "batch delete of a column")
    check(
        [k for k, _ in table.rows([b"user|007", b"nope", b"user|003"])],
        [b"user|007", b"user|003"],
        "rows()",
    )

    # scans: bytewise order, prefixes, ranges, columns, filters, limits
    keys = [k for k, _ in table.scan(row_prefix=b"user|01")]
    check(keys, [b"user|%03d" % i for i in range(10, 20)], "scan(row_prefix)")
    keys = [k for k, _ in table.scan(row_start=b"user|020", row_stop=b"user|025", batch_size=2)]
    check(keys, [b"user|%03d" % i for i in range(20, 25)], "scan(row_start, row_stop)")
    rows = list(table.scan(row_prefix=b"user|09", columns=[b"cf:n"]))
    check(rows[0], (b"user|090", {b"cf:n": b"90"}), "scan(columns)")
    keys = [k for k, _ in table.scan(filter=b"PrefixFilter('user|03')")]
    check(keys, [b"user|%03d" % i for i in range(30, 40)], "scan(filter=PrefixFilter)")
    keys = [k for k, _ in table.scan(row_start=b"user|050", limit=3)]
    check(keys, [b"user|050", b"user|051", b"user|052"], "scan(limit)")
    all_keys = [k for k, _ in table.scan()]
    check(all_keys, sorted(all_keys), "full scan is sorted")
    check(len(all_keys), 102, "full scan row count")
    data = list(table.scan(row_prefix=b"user|001", include_timestamp=True))
    check(len(data[0][1][b"cf:n"]), 2, "scan(include_timestamp) gives (value, ts)")

    # counters: 8-byte big-endian longs
    check(table.counter_inc(b"ctr", b"cf:hits"), 1, "counter_inc")
    check(table.counter_inc(b"ctr", b"cf:hits", value=5), 6, "counter_inc(5)")
    check(table.counter_dec(b"ctr", b"cf:hits"), 5, "counter_dec")
    check(table.counter_get(b"ctr", b"cf:hits"), 5, "counter_get")
    check(table.row(b"ctr")[b"cf:hits"], struct.pack(">q", 5), "counter cell bytes")
    # A fresh cell: increments in the same millisecond get timestamps past "now" (as in
    # HBase, max(now, previous + 1)), so a put right after them could land below them.
    table.counter_set(b"ctr2", b"cf:hits", 100)
    check(table.counter_inc(b"ctr2", b"cf:hits"), 101, "counter_inc after counter_set")

    # delete: whole row, some columns
    table.delete(b"user|000")
    check(table.row(b"user|000"), {}, "delete(row)")
    table.delete(b"user|001", columns=[b"cf:n"])
    check(table.row(b"user|001"), {b"meta:m": b"m"}, "delete(row, columns)")
    table.delete(b"user|002", columns=[b"meta"])
    check(table.row(b"user|002"), {b"cf:n": b"2"}, "delete(row, columns=[family])")

    # regions: one for a plain table, 128 salt regions for namespace chat
    regions = table.regions()
    check(len(regions), 1, "regions() of a plain table")
    check((regions[0]["start_key"], regions[0]["end_key"]), (b"", b""), "single region bounds")
    conn.create_table("chat:messages", {"m": dict()})
    regions = conn.table("chat:messages").regions()
    check(len(regions), 128, "regions() of a chat table")
    check(regions[1]["start_key"], b"001", "second salt region start")
    check(regions[127]["start_key"], b"127", "last salt region start")

    # errors: unknown table, unknown family
    try:
        conn.table("nope").row(b"r")
        raise AssertionError("reading an unknown table must fail")
    except HbaseIOError as e:
        assert b"nope" in e.message or "nope" in str(e.message), e
    try:
        table.put(b"r", {b"zz:q": b"v"})
        raise AssertionError("writing an unknown family must fail")
    except HbaseIOError:
        pass

    filters(conn)

    # disable / delete
    conn.delete_table("events", disable=True)
    conn.delete_table("people", disable=True)
    check(conn.tables(), [b"chat:messages"], "tables() after delete_table")
    conn.close()
    print("happybase: all checks passed")


def filters(conn):
    """The filters happybase users reach for, as HBase's ParseFilter reads them."""
    conn.create_table("people", {"cf": dict(max_versions=3)})
    t = conn.table("people")
    t.put(b"a1", {b"cf:name": b"alice", b"cf:age": b"30", b"cf:city": b"Paris"})
    t.put(b"a2", {b"cf:name": b"bob", b"cf:age": b"25"})
    t.put(b"b1", {b"cf:name": b"carol", b"cf:city": b"Rome"})
    t.put(b"ts", {b"cf:v": b"one"}, timestamp=100)
    t.put(b"ts", {b"cf:v": b"two"}, timestamp=200)

    def scan(f, **kw):
        return list(t.scan(filter=f, **kw))

    def keys(f):
        return [k for k, _ in scan(f)]

    # SingleColumnValueFilter: a row without the column passes unless filterIfMissing.
    check(keys(b"SingleColumnValueFilter('cf', 'name', =, 'binary:bob')"), [b"a2", b"ts"], "SCVF name=bob")
    check(keys(b"SingleColumnValueFilter('cf', 'city', =, 'binary:Rome', true, true)"), [b"b1"], "SCVF filterIfMissing")
    check(
        keys(b"SingleColumnValueFilter('cf', 'age', >=, 'binary:26', true, true)"), [b"a1"], "SCVF >= on bytes"
    )
    check(scan(b"SingleColumnValueFilter('cf', 'city', =, 'binary:Paris', true, true)")[0][1][b"cf:name"], b"alice",
          "SCVF returns the whole row")
    # ValueFilter, RowFilter, QualifierFilter: cell parts against comparators.
    check(scan(b"ValueFilter(=, 'binary:Paris')"), [(b"a1", {b"cf:city": b"Paris"})], "ValueFilter binary")
    check(keys(b"ValueFilter(=, 'substring:ROM')"), [b"b1"], "ValueFilter substring (case-insensitive)")
    check(keys(b"RowFilter(<, 'binary:b')"), [b"a1", b"a2"], "RowFilter <")
    check(keys(b"RowFilter(=, 'regexstring:^[ab]1$')"), [b"a1", b"b1"], "RowFilter regexstring")
    check(
        scan(b"QualifierFilter(=, 'binary:age')"),
        [(b"a1", {b"cf:age": b"30"}), (b"a2", {b"cf:age": b"25"})],
        "QualifierFilter",
    )
    check(keys(b"QualifierFilter(=, 'binaryprefix:ci')"), [b"a1", b"b1"], "QualifierFilter binaryprefix")
    # ColumnPaginationFilter(limit, offset): columns of each row in sorted order.
    check(
        scan(b"ColumnPaginationFilter(1, 1)"),
        [(b"a1", {b"cf:city": b"Paris"}), (b"a2", {b"cf:name": b"bob"}), (b"b1", {b"cf:name": b"carol"})],
        "ColumnPaginationFilter(1, 1)",
    )
    # TimestampsFilter: only the listed versions.
    check(scan(b"TimestampsFilter(100)"), [(b"ts", {b"cf:v": b"one"})], "TimestampsFilter(100)")
    check(
        scan(b"TimestampsFilter(100, 200)", include_timestamp=True),
        [(b"ts", {b"cf:v": (b"two", 200)})],
        "TimestampsFilter: the newest listed version",
    )
    # FilterList with OR (and AND binding tighter), row- and cell-level.
    check(
        scan(b"ValueFilter(=, 'binary:bob') OR ValueFilter(=, 'binary:Rome')"),
        [(b"a2", {b"cf:name": b"bob"}), (b"b1", {b"cf:city": b"Rome"})],
        "OR of ValueFilters",
    )
    check(keys(b"RowFilter(=, 'binary:a1') OR RowFilter(=, 'binary:b1')"), [b"a1", b"b1"], "OR of RowFilters")
    check(
        keys(b"(PrefixFilter('a') AND ValueFilter(=, 'binary:bob')) OR PrefixFilter('t')"),
        [b"a2", b"ts"],
        "AND inside OR",
    )
    check(
        scan(b"PrefixFilter('a') AND QualifierFilter(=, 'binary:name') AND KeyOnlyFilter()"),
        [(b"a1", {b"cf:name": b""}), (b"a2", {b"cf:name": b""})],
        "AND with KeyOnlyFilter",
    )
    # A filter the emulator does not know is refused, not ignored.
    try:
        scan(b"DependentColumnFilter('cf', 'name')")
        raise AssertionError("an unsupported filter must be refused")
    except HbaseIOError as e:
        assert b"DependentColumnFilter" in e.message or "DependentColumnFilter" in str(e.message), e


if __name__ == "__main__":
    main()
