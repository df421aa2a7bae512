"""The PostgreSQL servers, reached through psql with their superuser URLs."""

import os
import subprocess

from .common import die


class Server:
    """One PostgreSQL server, reached through its superuser URL."""

    def __init__(self, name, admin_url, bindir):
        self.name = name
        self.admin_url = admin_url
        self.psql_bin = os.path.join(bindir, "psql")
        self.pg_dump_bin = os.path.join(bindir, "pg_dump")
        self.postmaster = None  # pid, when the server runs on this machine

    def url(self, db):
        # postgres://user@host:port/postgres?x -> .../db?x
        base, sep, query = self.admin_url.partition("?")
        base = base.rsplit("/", 1)[0] + "/" + db
        return base + (sep + query if sep else "")

    def psql(self, db, sql, check=True, quiet=True):
        """Run SQL (from stdin, so any length) and return stdout, unaligned."""
        env = dict(os.environ)
        if quiet:
            env["PGOPTIONS"] = (env.get("PGOPTIONS", "") + " -c client_min_messages=warning").strip()
        p = subprocess.run(
            [self.psql_bin, "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", self.url(db)],
            input=sql, capture_output=True, text=True, env=env,
        )
        if check and p.returncode != 0:
            die(f"{self.name} {db}: psql failed ({p.returncode}):\n{p.stderr.strip()}\nSQL: {sql[:400]}")
        return p.stdout

    def value(self, db, sql):
        return self.psql(db, sql).strip()

    def rows(self, db, sql):
        return [line.split("\t") for line in self.psql(db, sql).splitlines() if line]

    def db_exists(self, db):
        return self.value("postgres", f"SELECT count(*) FROM pg_database WHERE datname = '{db}'") == "1"

    def recreate_db(self, db):
        self.psql("postgres", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        self.psql("postgres", f'CREATE DATABASE "{db}"')

    def drop_db(self, db):
        self.psql("postgres", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    def find_postmaster(self):
        """The postmaster's pid when the server runs here: the parent of its
        checkpointer (which lives as long as the server)."""
        try:
            aux = int(self.value("postgres", "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"))
            with open(f"/proc/{aux}/stat") as f:
                parent = int(stat_fields(f.read())[1])
            with open(f"/proc/{parent}/comm") as f:
                comm = f.read().strip()
            if comm in ("postgres", "postmaster"):
                self.postmaster = parent
        except (OSError, ValueError):
            self.postmaster = None
        return self.postmaster


def stat_fields(stat):
    """Fields of /proc/pid/stat after the command name: [state, ppid, ...]."""
    return stat[stat.rfind(")") + 2:].split()
