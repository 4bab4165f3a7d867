"""Check-in load benchmark of the fleet server (also: python -m benchmarks.checkin).

As a section of the suite (``python -m benchmarks checkin``): 10k and 100k registered
devices on SQLite and on PostgreSQL, check-ins per second beside the same server's
constant-JSON route driven by the same requests (baseline B, see ``__main__``). Goal:
check-ins at no less than 0.8× that baseline.
"""

from __future__ import annotations

import shutil

from benchmarks import Comparison, Context, Result

TITLE = "Fleet server check-ins (wrk, 2 workers)"


def run(ctx: Context) -> Result:
    from benchmarks.checkin.__main__ import run_case, start_postgres

    result = Result(TITLE, ["case", "requests", "req/s", "p50 ms", "p99 ms", "non-2xx"])
    if not shutil.which("wrk"):
        result.notes.append("wrk is not installed (scripts/sysdeps.sh installs it): skipped")
        return result
    sizes = [10_000] if ctx.quick else [10_000, 100_000]
    rounds = 1 if ctx.quick else 3
    cluster = None
    try:
        for backend in ("sqlite", "postgres"):
            for devices in sizes:
                if backend == "sqlite":
                    db_url = f"sqlite:///{ctx.scratch}/sqlite-{devices}.db"
                else:
                    cluster = cluster or start_postgres()
                    if cluster is None:
                        result.notes.append("PostgreSQL binaries not found: its cases skipped")
                        break
                    db_url = cluster.new_database()
                ctx.log(f"check-ins: {backend}, {devices} devices")
                baseline_a, baseline_b, checkins = run_case(
                    backend, db_url, devices, 5.0, rounds, ctx.scratch, in_process=False)
                name = f"{backend}, {devices // 1000}k devices"
                for label, r in (("A: GET constant JSON", baseline_a),
                                 ("B: check-in requests to constant JSON", baseline_b),
                                 ("check-ins", checkins)):
                    result.rows.append([name, label, f"{r.rate:.0f}", f"{r.p50_ms:.1f}",
                                        f"{r.p99_ms:.1f}", str(r.errors)])
                result.comparisons.append(Comparison(
                    name, "check-ins per second", checkins.rate, "0.8 × baseline B",
                    0.8 * baseline_b.rate, "req/s", higher_is_better=True))
    finally:
        if cluster is not None:
            cluster.stop()
    result.notes.append(f"medians of {rounds} interleaved rounds of 5 s; wrk -t1 -c64 on "
                        "the same 2-core machine as the server (--workers 2)")
    return result
