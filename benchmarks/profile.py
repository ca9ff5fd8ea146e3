"""Profile the servers under load: `python -m benchmarks.profile [--system switchboard] [--seconds 20]`.

Starts one system as `make bench` does (any of `benchmarks.systems.SYSTEMS`, the PostgreSQL ones
included), drives it at a fixed concurrency for a while and samples every Python process of that
system with py-spy (`pip install py-spy`; it needs ptrace rights, which root has; the PostgreSQL
server and the idle upload service are not sampled). Writes one collapsed-stack file per process
(`<role>.folded`, loadable in speedscope.app or flamegraph.pl) to `--out` and prints, per process,
the functions with the most samples: self time (the frame on top) and inclusive time (anywhere on
the stack).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Final

from benchmarks.client import Client
from benchmarks.loadgen import run_cell
from benchmarks.runner import DEFAULT_REPLY_TOKENS, raise_open_files_limit, start_systems
from benchmarks.systems import POSTGRES_ROLE, SYSTEMS
from switchboard.demo.benchmark import benchmark_text

CATEGORIES: Final = (
    # (label, substrings of a frame; the innermost frame that matches any rule decides)
    (
        "benchmark model (offline model, responses)",
        ("demo/benchmark.py", "app/offline.py", "app/_responses.py"),
    ),
    ("JWT auth", ("jwt/", "common/auth.py", "grpc_auth.py")),
    ("store (SQLAlchemy, aiosqlite, run lease)", ("store/", "aiosqlite/", "sqlalchemy/")),
    ("protobuf <-> chatkit codec", ("common/codec.py", "protobuf/", "edge/sse.py")),
    ("ChatKit request parsing", ("edge/chatkit.py",)),
    ("Agents SDK (openai-agents)", ("(agents/",)),
    ("gRPC (grpc.aio, Cython writes/reads)", ("grpc/", "ChatService._stream", "_StreamResponseMixin")),
    ("responder + translator", ("agents/responder.py", "agents/stream.py")),
    ("conversation (persistence rules)", ("conversation.py",)),
    ("aiohttp (HTTP, SSE writes)", ("aiohttp/",)),
    ("socket writes (transport.write)", ("_SelectorSocketTransport.write",)),
    ("epoll wait (select)", ("EpollSelector.select",)),
    ("event loop + C callbacks (futures, grpc completions)", ("asyncio/",)),
)
"""How `--categories` groups a process's samples (see docs/performance.md)."""


def categorize(folded: Path, main_frame: str) -> list[tuple[str, float]]:
    """Share of the samples whose stack contains `main_frame`, by the innermost matching category."""
    counts: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if main_frame not in stack:
            continue
        count = int(count_text)
        total += count
        label = "other"
        for frame in reversed(stack.split(";")):
            hit = next((name for name, rules in CATEGORIES if any(rule in frame for rule in rules)), None)
            if hit is not None:
                label = hit
                break
        counts[label] += count
    return [(label, 100 * n / total) for label, n in counts.most_common()] if total else []


def summarize(folded: Path, top: int) -> str:
    """The top functions of a py-spy collapsed-stack file, by self and by inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "  (no samples)"
    lines = [f"  {total} samples; self:"]
    lines += [f"    {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--system", choices=SYSTEMS, default=SYSTEMS[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--conversations", type=int, default=3000)
    parser.add_argument("--turns", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=15, help="how long py-spy samples")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--reply-tokens", type=int, default=DEFAULT_REPLY_TOKENS)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--gil", action="store_true", help="only samples that hold the GIL (Python work, no waiting)"
    )
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "switchboard-profile")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    raise_open_files_limit()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="switchboard-profile-") as tmp, ExitStack() as systems:
        running = start_systems([args.system], args.reply_tokens, Path(tmp), systems, print)
        target = running.targets[args.system]
        sampled = [role for role in target.pids if role not in ("upload", POSTGRES_ROLE)]
        grpc_address = None if running.sqlite is None else running.sqlite.agent_address

        async def load() -> None:
            client = Client(benchmark_text(args.reply_tokens), grpc_address)
            try:
                driver = await client.driver(target)
                await run_cell(driver, concurrency=16, conversations=200, turns=args.turns)
                driver = await client.driver(target)
                spies = [
                    subprocess.Popen(  # noqa: ASYNC220 - started once, before the load, never awaited
                        [
                            py_spy,
                            "record",
                            "--pid",
                            str(pid),
                            "--rate",
                            str(args.rate),
                            "--duration",
                            str(args.seconds),
                            "--format",
                            "raw",
                            "--nonblocking",
                            "--output",
                            str(args.out / f"{role}.folded"),
                            *(["--gil"] if args.gil else []),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    for role, pid in target.pids.items()
                    if role in sampled
                ]
                run = await run_cell(
                    driver, concurrency=args.concurrency, conversations=args.conversations, turns=args.turns
                )
                print(f"{run.conversations} conversations in {run.wall_s:.1f} s, {run.errors} errors")
                for spy in spies:
                    await asyncio.to_thread(spy.wait)
            finally:
                await client.close()

        asyncio.run(load())
    for role in sampled:
        folded = args.out / f"{role}.folded"
        if not folded.exists():
            continue
        print(f"\n== {role} ({folded})\n{summarize(folded, args.top)}")
        command = role.split("-")[0]  # agent replicas are "agent", "agent-2", ...
        main_frame = f"_run_{command} (services/cli.py" if command in ("edge", "agent") else "run_app"
        shares = categorize(folded, main_frame)
        if shares:
            print(f"  main thread by category ({main_frame.split(' ')[0]}):")
            for label, share in shares:
                print(f"    {share:5.1f}%  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
