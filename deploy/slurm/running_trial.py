#!/usr/bin/env python3
"""Prints the id of a trial that worker NAME runs and that has reported an epoch (or nothing).

Usage: running_trial.py STATE_DB NAME   (reads the coordinator's SQLite state read-only)
"""
import sqlite3
import sys

c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
row = c.execute(
    "SELECT t.id FROM trials t JOIN attempts a ON a.trial_id = t.id AND a.attempt = t.attempt "
    "JOIN workers w ON w.id = a.worker_id WHERE t.state = 'running' AND w.name = ? "
    "AND (SELECT COUNT(*) FROM epochs e WHERE e.trial_id = t.id) >= 1 LIMIT 1",
    (sys.argv[2],),
).fetchone()
print(row[0] if row else "")
