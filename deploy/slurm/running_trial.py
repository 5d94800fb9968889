#!/usr/bin/env python3
"""Prints the id of a trial that worker NAME runs and that has reported between 1 and MAX
epochs (or nothing): a trial in the middle of its training, with epochs still to go.

Usage: running_trial.py STATE_DB NAME [MAX]   (reads the coordinator's SQLite state read-only)
"""
import sqlite3
import sys

most = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000_000
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
row = c.execute(
    "SELECT t.id FROM trials t JOIN attempts a ON a.trial_id = t.id AND a.attempt = t.attempt "
    "JOIN workers w ON w.id = a.worker_id WHERE t.state = 'running' AND w.name = ? "
    "AND (SELECT COUNT(*) FROM epochs e WHERE e.trial_id = t.id) BETWEEN 1 AND ? LIMIT 1",
    (sys.argv[2], most),
).fetchone()
print(row[0] if row else "")
