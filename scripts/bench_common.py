"""The child processes of scripts/bench.py, one role each, so that every measured process is its own.

    python scripts/bench_common.py sim --record FILE --ready FILE [simulator flags]   the fake Graph API
    python scripts/bench_common.py collect CONFIG                                     one run_pass
    python scripts/bench_common.py baseline RECORD --concurrency C                    a bare aiohttp loop

`collect` and `baseline` print one JSON line on stdout (their measurements) as their last line. CPU time
is measured inside the child around the measured work only (`time.process_time`: imports, migrations and
pool setup are excluded); the parent also reads the whole child's rusage (wait4), including those.

`sim` records every Graph request it serves (path and query, status, and for paged edges the item count
and whether `next` was given) to --record, so the baseline replays exactly the collector's requests and the
parent can prove there were no wasted calls. The recording costs the simulator ~2 µs a request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import IO, Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULT_PREFIX = "BENCH_RESULT "


def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM (peak resident set) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a live process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runnable_seconds(pid: int) -> float:
    """Seconds a process was running or waiting for a CPU (/proc/<pid>/schedstat: run + run-queue wait).

    Over a wall interval, a share near 1.0 means the process never idled: it is the bottleneck, even when
    other load on the machine kept its CPU share low.
    """
    run_ns, wait_ns = Path(f"/proc/{pid}/schedstat").read_text().split()[:2]
    return (int(run_ns) + int(wait_ns)) / 1e9


def pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def run_loop(main: Callable[[], Coroutine[Any, Any, int]], *, uvloop: bool) -> int:
    from collector import eventloop  # noqa: PLC0415  # after the sys.path line above

    with eventloop.runner(uvloop) as runner:
        return runner.run(main())


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(RESULT_PREFIX + orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


# -- sim -------------------------------------------------------------------------------------------------


def sim_main(argv: list[str]) -> int:
    from aiohttp import web  # noqa: PLC0415

    from collector.simulator import cli as sim_cli  # noqa: PLC0415
    from collector.simulator import server  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="bench_common.py sim")
    sim_cli.add_arguments(parser)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--ready", type=Path, required=True, help="the port is written here once serving")
    parser.add_argument("--cpu", type=int)
    args = parser.parse_args(argv)
    pin(args.cpu)
    world, options = sim_cli.build(args)
    if args.write_accounts:
        sim_cli.write_accounts(world, args.write_accounts)
    app = server.make_app(world, options)
    recorder: dict[str, IO[str] | None] = {"file": None}
    first_at = args.record.with_suffix(".first")  # the epoch time of the first request recorded

    def control(request: web.Request) -> web.Response:
        """POST /__bench/record?on=1|0: start (truncating) or stop recording; stopping flushes."""
        if recorder["file"] is not None:
            recorder["file"].close()
            recorder["file"] = None
        if request.query.get("on") == "1":
            recorder["file"] = args.record.open("w", buffering=1 << 20)
            first_at.unlink(missing_ok=True)
        return web.json_response({"ok": True})

    @web.middleware
    async def record(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        # The control endpoint lives here: make_app's catch-all route would shadow any route added after it.
        if request.path == "/__bench/record":
            return control(request)
        if recorder["file"] is not None and not request.path.startswith("/__") and not first_at.exists():
            # When the first Graph call arrived (start-up time): stamped before the handler, whose simulated
            # latency (~50 ms) is the answer's, not the call's.
            first_at.write_text(f"{time.time()}\n")
        response = await handler(request)
        out = recorder["file"]
        if out is not None and not request.path.startswith("/__"):
            line = f"{request.path_qs}\t{response.status}"
            if request.path.endswith(("/media", "/stories")) and isinstance(response, web.Response):
                body = response.body
                page = orjson.loads(body) if isinstance(body, bytes) else {}
                has_next = int(bool((page.get("paging") or {}).get("next")))
                line += f"\t{len(page.get('data') or ())}\t{has_next}"
            out.write(line + "\n")
        return response

    app.middlewares.append(record)

    async def serve() -> int:
        def listening(port: int) -> None:
            args.ready.write_text(f"{port}\n")

        try:
            await sim_cli.serve_until_stopped(app, "127.0.0.1", args.port, on_listening=listening,
                                              backlog=4096)
        finally:
            if recorder["file"] is not None:
                recorder["file"].close()
        return 0

    return run_loop(serve, uvloop=True)


# -- collect ---------------------------------------------------------------------------------------------


def collect_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_common.py collect")
    parser.add_argument("config", type=Path)
    parser.add_argument("--cpu", type=int)
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--profile", type=Path, help="cProfile the pass into this file (slows it down)")
    args = parser.parse_args(argv)
    pin(args.cpu)

    from collector import config, logs, metrics, passes  # noqa: PLC0415
    from collector.storage import db  # noqa: PLC0415

    cfg = config.load(args.config)
    logs.configure(level=cfg.log.level, json=True)

    async def main() -> int:
        counters = metrics.Metrics()
        async with await db.open_database(cfg.database, state_dir=cfg.state_dir) as database:
            await database.migrate()
            rss_before = peak_rss_mb()
            cpu_before, wall_before = time.process_time(), time.perf_counter()
            profiler = None
            if args.profile:
                import cProfile  # noqa: PLC0415

                profiler = cProfile.Profile()
                profiler.enable()
            summary = await passes.run_pass(cfg, database.pool, stop=asyncio.Event(), metrics=counters)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            cpu_s, wall_s = time.process_time() - cpu_before, time.perf_counter() - wall_before
        flush = _histogram(counters.writer_flush_seconds)
        self_usage = resource.getrusage(resource.RUSAGE_SELF)
        emit({
            "summary": summary.as_dict(), "wall_s": wall_s, "cpu_s": cpu_s,
            "rss_before_pass_mb": rss_before, "peak_rss_mb": peak_rss_mb(),
            "writer_wait_s": counters.total(counters.writer_wait_seconds),
            "writer_flush_s": flush["sum"], "writer_flushes": flush["count"],
            "writer_errors": counters.total(counters.writer_errors),
            "max_concurrent_accounts": cfg.collect.max_concurrent_accounts,
            "ctx_switches": self_usage.ru_nvcsw + self_usage.ru_nivcsw,
        })
        return int(summary.exit_code)

    return run_loop(main, uvloop=not args.no_uvloop)


def _histogram(histogram: Any) -> dict[str, float]:
    out = {"sum": 0.0, "count": 0.0}
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                out["sum"] += sample.value
            elif sample.name.endswith("_count"):
                out["count"] += sample.value
    return out


# -- baseline --------------------------------------------------------------------------------------------


def baseline_main(argv: list[str]) -> int:
    """The ceiling: the recorded requests, replayed by C tasks over one session, each response's JSON
    parsed with orjson and dropped. Nothing else: no limiter, no classification, no storage."""
    parser = argparse.ArgumentParser(prog="bench_common.py baseline")
    parser.add_argument("record", type=Path)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--cpu", type=int)
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    pin(args.cpu)

    import aiohttp  # noqa: PLC0415

    with args.record.open() as f:
        urls = [args.base_url + line.split("\t", 1)[0] for line in f]

    async def main() -> int:
        queue = iter(urls)
        failures = 0

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal failures
            for url in queue:
                # yarl must not re-quote the recorded (already encoded) query.
                async with session.get(yarl.URL(url, encoded=True)) as response:
                    body = await response.read()
                    orjson.loads(body)
                    failures += response.status >= 500

        import yarl  # noqa: PLC0415

        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            cpu_before, wall_before = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
            cpu_s, wall_s = time.process_time() - cpu_before, time.perf_counter() - wall_before
        emit({"calls": len(urls), "wall_s": wall_s, "cpu_s": cpu_s, "peak_rss_mb": peak_rss_mb(),
              "server_errors": failures})
        return 0

    return run_loop(main, uvloop=not args.no_uvloop)


ROLES = {"sim": sim_main, "collect": collect_main, "baseline": baseline_main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ROLES:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(ROLES)}}} ...")
    sys.exit(ROLES[sys.argv[1]](sys.argv[2:]))
