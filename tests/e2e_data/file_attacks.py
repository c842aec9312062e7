"""What a watched user tries against the files of the root daemon (#10), run as
that user: write, truncate, replace, remove, rename, chmod each file; create,
plant a symlink in, rename, chmod each directory; write into the alerts table
the desktop notifier follows (the user may read the database: it is in
daemon.db_group). Prints one JSON object: {"attack on PATH": "OK" or the
error}. usage: file_attacks.py DAEMON_PID DB FILE... -- DIR..."""

import json
import os
import sqlite3
import sys

pid, db = sys.argv[1], sys.argv[2]
rest = sys.argv[3:]
files, dirs = rest[: rest.index("--")], rest[rest.index("--") + 1 :]
out = {}


def attempt(what, fn):
    try:
        fn()
        out[what] = "OK"
    except (OSError, sqlite3.Error) as exc:
        out[what] = f"{type(exc).__name__}: {exc}"


mine = os.path.join(os.environ["HOME"], "mine")
with open(mine, "w") as fh:
    fh.write("the user's own file\n")
for f in files:
    d = os.path.dirname(f)
    attempt(f"append to {f}", lambda f=f: os.close(os.open(f, os.O_WRONLY | os.O_APPEND)))
    attempt(f"truncate {f}", lambda f=f: os.truncate(f, 0))
    attempt(f"remove {f}", lambda f=f: os.unlink(f))
    attempt(f"rename {f}", lambda f=f: os.rename(f, f + ".moved"))
    attempt(f"hard link beside {f}", lambda f=f: os.link(mine, f + ".new"))
    attempt(f"replace {f} by a rename", lambda f=f: os.rename(mine, f))
    attempt(f"chmod {f}", lambda f=f: os.chmod(f, 0o666))
    # the names the daemon writes through: a symlink planted for its temporary file
    tmp = os.path.join(d, f".{os.path.basename(f)}.{pid}.tmp")
    attempt(f"symlink {tmp}", lambda tmp=tmp: os.symlink("/etc/shadow", tmp))
for d in dirs:
    attempt(
        f"create in {d}", lambda d=d: os.close(os.open(os.path.join(d, "planted"), os.O_CREAT | os.O_WRONLY))
    )
    attempt(f"symlink in {d}", lambda d=d: os.symlink("/etc/shadow", os.path.join(d, "link")))
    attempt(f"rename {d}", lambda d=d: os.rename(d, d + ".moved"))
    attempt(f"chmod {d}", lambda d=d: os.chmod(d, 0o777))


def read_alerts():
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        conn.execute("SELECT COUNT(*) FROM alerts").fetchone()
    finally:
        conn.close()


def write_alert():
    conn = sqlite3.connect(db, timeout=2)
    try:
        conn.execute("INSERT INTO alerts (title, body) VALUES ('forged', 'forged')")
        conn.commit()
    finally:
        conn.close()


attempt("read the alerts table", read_alerts)
attempt("insert into the alerts table", write_alert)
print(json.dumps(out))
