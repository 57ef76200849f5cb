"""Workers starting at the same instant on a fresh, empty database all succeed.

Unprotected, 4 Optuna workers on a new PostgreSQL database fail 3 times in 4 (UniqueViolation
while creating the schema), and SQLite fails with "table ... already exists".
"""

import subprocess
import sys

WORKER = """
import sys
from maskopt.storage import create_or_load_study, open_storage

url = sys.argv[1]
print("ready", flush=True)
sys.stdin.readline()  # the barrier: every worker has imported everything
study = create_or_load_study(storage=open_storage(url), study_name="race")
print("ok", study._study_id, flush=True)
"""


def run_workers_at_once(url, n):
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready", worker.stderr.read()
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()
    results = [worker.communicate(timeout=60) for worker in workers]
    for worker, (out, err) in zip(workers, results):
        assert worker.returncode == 0, err
    return {out.strip() for out, _ in results}


def test_four_workers_on_a_fresh_postgresql_database(fresh_postgres_url):
    assert run_workers_at_once(fresh_postgres_url, 4) == {"ok 1"}


def test_two_workers_on_a_fresh_sqlite_file(tmp_path):
    assert run_workers_at_once(f"sqlite:///{tmp_path / 'race.db'}", 2) == {"ok 1"}
