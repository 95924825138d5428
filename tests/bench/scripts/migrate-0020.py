#!/usr/bin/env python3
"""What migration 0020 (raw telemetry as one row per reading) costs on SQLite, and
what it saves on disk (docs/BENCHMARKS.md, "Raw telemetry as one row per reading").

Makes a store with this checkout's SQLite migrations up to 0019, fills its
per-metric table with READINGS readings of four metrics (1,000 devices, one
version set), then applies 0020 as the server would. Prints the time the
migration took and the store's size (after VACUUM) before and after.

    python3 tests/bench/scripts/migrate-0020.py [READINGS] [DIR]
"""

import glob
import os
import sqlite3
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIGRATIONS = os.path.join(HERE, "../../../migrations/sqlite")
DEVICES = 1_000
METRICS = 4
TS0 = 1_800_000_000_000


def size_mib(db, path):
    db.execute("VACUUM")
    return os.path.getsize(path) / (1 << 20)


def main():
    readings = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    parent = sys.argv[2] if len(sys.argv) > 2 else None
    files = sorted(glob.glob(os.path.join(MIGRATIONS, "*.sql")))
    before = [f for f in files if int(os.path.basename(f)[:4]) < 20]
    (m0020,) = [f for f in files if os.path.basename(f).startswith("0020")]
    with tempfile.TemporaryDirectory(dir=parent) as d:
        path = os.path.join(d, "store.db")
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        for f in before:
            with open(f) as sql:
                db.executescript(sql.read())
        db.execute("BEGIN")
        ids = [db.execute("INSERT INTO metric_names (name) VALUES (?) RETURNING id", (f"m{m}",)).fetchone()[0]
               for m in range(METRICS)]
        vset = db.execute("INSERT INTO version_sets (versions) VALUES ('{}') RETURNING id").fetchone()[0]
        rows = ((f"bench{i % DEVICES:06}", ids[m], TS0 + i, round(20 + (i * 7919 + m * 104729) % 6000 / 100, 2), vset)
                for i in range(readings) for m in range(METRICS))
        db.executemany("INSERT INTO telemetry_points VALUES (?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
        old = size_mib(db, path)
        with open(m0020) as sql:
            script = sql.read()
        start = time.perf_counter()
        db.executescript("BEGIN;" + script + "COMMIT;")
        took = time.perf_counter() - start
        new = size_mib(db, path)
        (count,) = db.execute("SELECT COUNT(*) FROM telemetry_readings").fetchone()
        print(f"SQLite {sqlite3.sqlite_version}: {readings:,} readings of {METRICS} metrics "
              f"({readings * METRICS:,} points), {DEVICES:,} devices")
        print(f"migration 0020: {took:.1f} s ({readings / took:,.0f} readings/s), {count:,} rows")
        print(f"store after VACUUM: {old:,.1f} MiB a row per metric, {new:,.1f} MiB a row per reading "
              f"({(old - new) * (1 << 20) / readings:,.0f} bytes less per reading)")
        db.close()


if __name__ == "__main__":
    main()
