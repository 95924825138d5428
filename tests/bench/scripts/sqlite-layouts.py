#!/usr/bin/env python3
"""What SQLite alone costs for ingest's writes (docs/BENCHMARKS.md, "Ingest from an
external broker: where the time goes"): no server, no broker, no MQTT.

Writes the ceiling benchmark's flood (1,000 devices, three metrics a reading) in
10,000-reading transactions, as the server's batches do, into a fresh store made by
this checkout's SQLite migration (WAL, synchronous=NORMAL), through Python's
sqlite3 module (its executemany loop runs in C). Prints readings per second over
the last 100,000 of 300,000 readings, for the points layout the server used until
migration 0020 (a row per metric), for the one it uses since (a row per reading,
which this measurement chose) and for three others: an integer series key, the
de-duplication keys in a WITHOUT ROWID table, and no separate de-duplication row; each with SQLite's default page cache and with a 32 MiB one. The store is made by migration 0003, so the script
measures the layouts themselves, not the server's current tables.

    python3 tests/bench/scripts/sqlite-layouts.py [DIR]
"""

import json
import os
import sqlite3
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIGRATION = os.path.join(HERE, "../../../migrations/sqlite/0003_telemetry.sql")
DEVICES = 1_000
BATCH = 10_000
BATCHES = 30
MEASURED = 10  # the last batches, once the tables hold 200,000 readings
TS0 = 1_800_000_000_000

# Layouts compared against the one before migration 0020 (a row per metric of a reading).
OTHERS = """
CREATE TABLE per_reading (device_id TEXT NOT NULL, ts BIGINT NOT NULL,
    version_set_id BIGINT NOT NULL, metrics TEXT NOT NULL);
CREATE INDEX per_reading_series ON per_reading (device_id, ts);
CREATE INDEX per_reading_ts ON per_reading (ts);
CREATE TABLE integer_series (series_id INTEGER NOT NULL, ts BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL, version_set_id BIGINT NOT NULL);
CREATE INDEX integer_series_series ON integer_series (series_id, ts);
CREATE INDEX integer_series_ts ON integer_series (ts);
CREATE TABLE keyed_reading (device_id TEXT NOT NULL, epoch TEXT NOT NULL, seq BIGINT NOT NULL,
    ts BIGINT NOT NULL, version_set_id BIGINT NOT NULL, metrics TEXT NOT NULL,
    PRIMARY KEY (device_id, epoch, seq));
CREATE INDEX keyed_reading_series ON keyed_reading (device_id, ts);
CREATE INDEX keyed_reading_ts ON keyed_reading (ts);
CREATE TABLE seen_without_rowid (device_id TEXT NOT NULL, epoch TEXT NOT NULL,
    seq BIGINT NOT NULL, ts BIGINT NOT NULL, PRIMARY KEY (device_id, epoch, seq)) WITHOUT ROWID;
CREATE INDEX seen_without_rowid_ts ON seen_without_rowid (ts);
"""

LAYOUTS = {
    "before 0020: a row per metric, (device_id, metric_id, ts) index": (
        "INSERT INTO telemetry_points VALUES (?, ?, ?, ?, ?)",
        lambda d, ts: [(f"bench{d:06}", m, ts, 40.5, 1) for m in (1, 2, 3)],
    ),
    "a row per metric, integer series key": (
        "INSERT INTO integer_series VALUES (?, ?, ?, ?)",
        lambda d, ts: [(d * 64 + m, ts, 40.5, 1) for m in (1, 2, 3)],
    ),
    "since 0020: a row per reading, metrics as JSON": (
        "INSERT INTO per_reading VALUES (?, ?, ?, ?)",
        lambda d, ts: [(f"bench{d:06}", ts, 1, json.dumps({"1": 40.5, "2": 0.1, "3": 20.2}))],
    ),
    "a row per reading, de-duplication keys WITHOUT ROWID": (
        "INSERT INTO per_reading VALUES (?, ?, ?, ?)",
        lambda d, ts: [(f"bench{d:06}", ts, 1, json.dumps({"1": 40.5, "2": 0.1, "3": 20.2}))],
    ),
    # The reading's row is its own de-duplication key: no telemetry_seen row.
    "a row per reading that is its own de-duplication key": (
        "INSERT INTO keyed_reading VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        lambda d, ts: [(f"bench{d:06}", "b0b0", ts - TS0, ts, 1,
                        json.dumps({"1": 40.5, "2": 0.1, "3": 20.2}))],
    ),
}
# Where each layout keeps its de-duplication keys (None: in the reading's own row).
SEEN = {
    "a row per reading that is its own de-duplication key": None,
    "a row per reading, de-duplication keys WITHOUT ROWID": "seen_without_rowid",
}


def run(directory, insert, rows_of, cache_kib, seen_table):
    path = os.path.join(directory, "layout.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    if cache_kib:
        db.execute(f"PRAGMA cache_size=-{cache_kib}")
    with open(MIGRATION) as f:
        db.executescript(f.read())
    db.executescript(OTHERS)
    spent = 0.0
    for b in range(BATCHES):
        seen, rows = [], []
        for i in range(BATCH):
            d, seq = i % DEVICES, b * (BATCH // DEVICES) + i // DEVICES
            seen.append((f"bench{d:06}", "b0b0", seq, TS0 + seq))
            rows.extend(rows_of(d, TS0 + seq))
        start = time.perf_counter()
        db.execute("BEGIN")
        if seen_table:
            db.executemany(f"INSERT INTO {seen_table} VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", seen)
        db.executemany(insert, rows)
        db.execute("COMMIT")
        if b >= BATCHES - MEASURED:
            spent += time.perf_counter() - start
    db.close()
    return MEASURED * BATCH / spent


def main():
    with tempfile.TemporaryDirectory(dir=sys.argv[1] if len(sys.argv) > 1 else None) as d:
        print("| layout | default cache (2 MiB) | 32 MiB cache |")
        print("|---|---|---|")
        for name, (insert, rows_of) in LAYOUTS.items():
            seen_table = SEEN.get(name, "telemetry_seen")
            plain = run(d, insert, rows_of, None, seen_table)
            cached = run(d, insert, rows_of, 32 * 1024, seen_table)
            print(f"| {name} | {plain:,.0f}/s | {cached:,.0f}/s |")


if __name__ == "__main__":
    main()
