"""Streaming speed of SmolLM2 through the router against llama-cpp-python called directly.

What is measured: time to first token (TTFT: from sending the request to the first
non-empty content chunk) and decode speed (tokens/s: content chunks after the first,
over the time from the first chunk to the last; llama.cpp streams one chunk a token)
for the same chat, greedy (temperature 0, fixed seed), ``max_tokens`` 128, with the
bundled SmolLM2-135M-Instruct GGUF and identical llama.cpp settings on both sides
(``n_threads`` 2 unless ``--n-threads``, ``n_ctx`` 2048, ``n_batch`` 512, top_p 0.95,
repeat penalty 1):

- direct: ``Llama.create_chat_completion(stream=True)`` in this process;
- router: ``POST /v1/chat/completions`` with ``stream: true`` to a router process whose
  route's champion is a ``LlamaCppSpec`` of the same file, read as server-sent events
  with httpx.

How: two models never generate at once on the two cores. The router runs in its own
process, its model loaded but idle while the direct model works; the direct model is
loaded for its run, warmed up with one short generation, and closed after it. Rounds
alternate the sides (and which goes first), and every measured run starts after the
same short pause. By default every run answers the same chat whose prompt each side has
just evaluated (llama.cpp reuses the cached prefix), so TTFT is one decode step plus
the path to it, and the router's share is not lost in the noise of prompt evaluation;
``--fresh-prompts`` gives each round a new system prompt instead. Reported: per-run
figures, medians, the router/direct tokens/s ratio and the TTFT the router adds (also
paired round by round, which cancels drift on a shared machine).

Run ``.venv/bin/python benchmarks/stream.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
from httpx_sse import EventSource
from serving import ServerProcess

from registry.bundled import smollm2_path
from router.app import create_app
from router.backends import LlamaCppSpec
from router.config import RouteConfig, Settings

ROUTE = "chat"
N_CTX, SEED = 2048, 42
QUESTION = "Write a short story about a robot who learns to paint."
TARGET_RATIO, TARGET_TTFT_ADDED_MS = 0.97, 2.0
SETTLE_S = 0.5


@dataclass(frozen=True, slots=True)
class Run:
    """One streamed answer, timed by the caller."""

    side: str
    ttft_ms: float
    tokens: int
    decode_s: float
    total_s: float
    text: str

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: tokens after the first, over the time they took."""
        return (self.tokens - 1) / self.decode_s if self.decode_s > 0 else float("nan")

    @property
    def e2e_tokens_per_s(self) -> float:
        return self.tokens / self.total_s


def messages(session: int) -> list[dict[str, str]]:
    """The chat; sessions differ near the start, so llama.cpp can reuse little of another's."""
    system = f"Session {session}. You are a helpful assistant who writes vivid stories."
    return [{"role": "system", "content": system}, {"role": "user", "content": QUESTION}]


def sampling(max_tokens: int) -> dict[str, Any]:
    """What both sides send: the router's spec defaults, made explicit for the direct call."""
    return {"max_tokens": max_tokens, "temperature": 0.0, "top_p": 0.95, "seed": SEED}


def settle() -> None:
    """Let the machine go quiet before a measured run, the same way on both sides.

    Without it, a router run right after the direct model closes pays for that teardown
    (and the direct run right after its warm-up finds llama.cpp's threads still awake).
    """
    gc.collect()
    time.sleep(SETTLE_S)


def timed(side: str, pieces: Iterable[str], start: float) -> Run:
    """Time a stream of content pieces; empty pieces (role chunks) do not count."""
    first = last = 0.0
    parts: list[str] = []
    for piece in pieces:
        if not piece:
            continue
        last = time.perf_counter()
        first = first or last
        parts.append(piece)
    if not parts:
        raise RuntimeError(f"{side}: the stream carried no content")
    return Run(
        side=side,
        ttft_ms=(first - start) * 1000,
        tokens=len(parts),
        decode_s=last - first,
        total_s=last - start,
        text="".join(parts),
    )


# -- direct ------------------------------------------------------------------------------
def load_llama(path: Path, n_threads: int) -> Any:
    """The model with the settings ``LlamaCppBackend`` uses for the router's spec."""
    from llama_cpp import Llama

    return Llama(
        model_path=str(path),
        n_ctx=N_CTX,
        n_batch=512,
        n_gpu_layers=0,
        n_threads=n_threads,
        seed=SEED,
        chat_format=None,
        verbose=False,
    )


def direct_pieces(llm: Any, chat: list[dict[str, str]], max_tokens: int) -> Iterator[str]:
    stream = llm.create_chat_completion(
        messages=chat, stream=True, repeat_penalty=1.0, **sampling(max_tokens)
    )
    for chunk in stream:
        yield chunk["choices"][0]["delta"].get("content") or ""


def run_direct(
    path: Path,
    chat: list[dict[str, str]],
    warmup: list[dict[str, str]],
    max_tokens: int,
    n_threads: int,
) -> Run:
    """Load, warm up, measure one answer, close: the model exists only for this run."""
    llm = load_llama(path, n_threads)
    try:
        for _ in direct_pieces(llm, warmup, 8):
            pass
        settle()
        start = time.perf_counter()
        return timed("direct", direct_pieces(llm, chat, max_tokens), start)
    finally:
        llm.close()


# -- router ------------------------------------------------------------------------------
def router_settings(data_dir: Path, path: Path, max_tokens: int, n_threads: int) -> Settings:
    champion = LlamaCppSpec(
        name="smollm2-135m-instruct",
        version="bundled",
        gguf=str(path),
        n_ctx=N_CTX,
        n_threads=n_threads,
        seed=SEED,
        temperature=0.0,
        max_tokens=max_tokens,
    )
    return Settings(
        data_dir=data_dir,
        routes={ROUTE: RouteConfig(champion=champion, challenger=None)},
        log_format="text",
        log_level="WARNING",
    )


def router_pieces(response: httpx.Response) -> Iterator[str]:
    """Content of each ``chat.completion.chunk`` event, until ``[DONE]``."""
    for event in EventSource(response).iter_sse():
        if event.data == "[DONE]":
            return
        chunk = orjson.loads(event.data)
        if "error" in chunk:
            raise RuntimeError(f"router stream failed: {chunk['error']}")
        for choice in chunk.get("choices") or []:
            yield (choice.get("delta") or {}).get("content") or ""


def run_router(client: httpx.Client, chat: list[dict[str, str]], max_tokens: int) -> Run:
    body = orjson.dumps({"model": ROUTE, "messages": chat, "stream": True, **sampling(max_tokens)})
    settle()
    start = time.perf_counter()
    with client.stream(
        "POST", "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    ) as response:
        if response.status_code != 200:
            raise RuntimeError(f"router: HTTP {response.status_code}: {response.read()[:200]!r}")
        return timed("router", router_pieces(response), start)


# -- report ------------------------------------------------------------------------------
def print_runs(runs: list[tuple[int, Run]]) -> None:
    print(f"{'round':>5}  {'side':<7}{'TTFT ms':>9}{'tokens':>8}{'tok/s':>9}{'e2e tok/s':>11}")
    for round_no, r in runs:
        print(
            f"{round_no:>5}  {r.side:<7}{r.ttft_ms:>9.2f}{r.tokens:>8}"
            f"{r.tokens_per_s:>9.1f}{r.e2e_tokens_per_s:>11.1f}"
        )


def medians(runs: list[Run]) -> tuple[float, float, float]:
    """Median TTFT (ms), tokens/s and end-to-end tokens/s."""
    return (
        statistics.median(r.ttft_ms for r in runs),
        statistics.median(r.tokens_per_s for r in runs),
        statistics.median(r.e2e_tokens_per_s for r in runs),
    )


def print_summary(runs: list[tuple[int, Run]]) -> bool:
    """Medians, ratio and TTFT added; True when both targets are met."""
    by_round: dict[int, dict[str, Run]] = {}
    for round_no, r in runs:
        by_round.setdefault(round_no, {})[r.side] = r
    direct = [sides["direct"] for sides in by_round.values()]
    routed = [sides["router"] for sides in by_round.values()]
    print(f"{'median':<8}{'TTFT ms':>9}{'tok/s':>9}{'e2e tok/s':>11}")
    for side, rs in (("direct", direct), ("router", routed)):
        ttft, tps, e2e = medians(rs)
        print(f"{side:<8}{ttft:>9.2f}{tps:>9.1f}{e2e:>11.1f}")
    (d_ttft, d_tps, d_e2e), (r_ttft, r_tps, r_e2e) = medians(direct), medians(routed)
    ratio, added = r_tps / d_tps, r_ttft - d_ttft
    # Paired: each round's router run against that round's direct run (drift cancels).
    pairs = list(zip(direct, routed, strict=True))
    paired_ratio = statistics.median(r.tokens_per_s / d.tokens_per_s for d, r in pairs)
    paired_added = statistics.median(r.ttft_ms - d.ttft_ms for d, r in pairs)
    ratio_ok, ttft_ok = ratio >= TARGET_RATIO, added <= TARGET_TTFT_ADDED_MS
    print()
    print(
        f"tokens/s ratio router/direct {ratio:.3f} (end to end {r_e2e / d_e2e:.3f}; "
        f"paired per round {paired_ratio:.3f}); target >= {TARGET_RATIO}: "
        f"{'PASS' if ratio_ok else 'MISS'}"
    )
    print(
        f"TTFT added by the router {added:+.2f} ms (paired per round {paired_added:+.2f} ms); "
        f"target <= {TARGET_TTFT_ADDED_MS:g} ms: {'PASS' if ttft_ok else 'MISS'}"
    )
    if any(d.text != r.text for d, r in pairs):
        print("note: router and direct answers differ in some rounds")
    return ratio_ok and ttft_ok


def measure(path: Path, router_url: str, args: argparse.Namespace) -> list[tuple[int, Run]]:
    """Alternating rounds; odd rounds start with the router.

    Cached prompt (default): every run answers session 0, and each side has just
    evaluated that prompt (the router in its previous run, the direct model in its
    warm-up), so TTFT is one decode step plus the path to it and the router's part stands
    out of the noise. Fresh prompts: a new session each round, the whole prompt evaluated.
    """
    runs: list[tuple[int, Run]] = []
    with httpx.Client(base_url=router_url, timeout=300.0) as client:
        run_router(client, messages(-1000 if args.fresh_prompts else 0), args.max_tokens)
        for round_no in range(1, args.runs + 1):
            chat = messages(round_no if args.fresh_prompts else 0)
            warmup = messages(-round_no) if args.fresh_prompts else chat
            sides = ["direct", "router"] if round_no % 2 == 0 else ["router", "direct"]
            for side in sides:
                if side == "direct":
                    runs.append(
                        (round_no, run_direct(path, chat, warmup, args.max_tokens, args.n_threads))
                    )
                else:
                    runs.append((round_no, run_router(client, chat, args.max_tokens)))
    return runs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per side")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--fresh-prompts",
        action="store_true",
        help="a new system prompt each round: TTFT includes evaluating the whole prompt",
    )
    parser.add_argument("--quick", action="store_true", help="2 runs per side, 32 tokens")
    parser.add_argument(
        "--n-threads", type=int, default=2, help="llama.cpp threads, the same on both sides"
    )
    args = parser.parse_args()
    if args.quick:
        args.runs, args.max_tokens = 2, 32
    return args


def main() -> None:
    args = parse_args()
    path = smollm2_path()
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp:
        settings = router_settings(Path(tmp), path, args.max_tokens, args.n_threads)
        with ServerProcess(partial(create_app, settings)) as router:
            runs = measure(path, router.url, args)
    print(
        f"SmolLM2-135M-Instruct ({path.name}), {os.cpu_count()} CPU cores, "
        f"n_threads {args.n_threads}, n_ctx {N_CTX}, temperature 0, seed {SEED}, "
        f"max_tokens {args.max_tokens}, {args.runs} runs per side, "
        f"{'fresh prompt each round' if args.fresh_prompts else 'prompt cached on both sides'}"
    )
    print()
    print_runs(runs)
    print()
    if not print_summary(runs):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
