"""OpenAI's sampling values checked and put in llama.cpp's terms (``n``, ranged numbers,
``logit_bias``, a choice's ``seed``), and llama.cpp's logprobs in OpenAI's."""

from __future__ import annotations

from typing import Any

from router.errors import InvalidRequest

#: The most choices one request may ask for (``n``), as OpenAI allows.
MAX_TOP_LOGPROBS = 20


def number(
    name: str, value: Any, low: float | None, high: float | None, integer: bool = False
) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        raise InvalidRequest(f"{name} must be a number.", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidRequest(f"{name} must be from {low} to {high}.", param=name)
    return float(value)


def logit_bias(bias: Any, n_vocab: int) -> dict[int, float]:
    """OpenAI's ``{"token id": bias}`` as llama.cpp's ``{token id: bias}``."""
    if not isinstance(bias, dict):
        raise InvalidRequest("logit_bias must map token ids to biases.", param="logit_bias")
    out: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            token = -1
        if not 0 <= token < n_vocab:
            raise InvalidRequest(
                f"logit_bias key {key!r} is not a token id of this model (0 to {n_vocab - 1}).",
                param="logit_bias",
            )
        out[token] = number("logit_bias", value, -100, 100)
    return out


def logprob_entries(logprobs: Any, top: int | None) -> list[dict[str, Any]]:
    """llama.cpp's completion logprobs as OpenAI's chat ``logprobs.content`` entries."""
    if not logprobs or top is None:
        return []

    def entry(token: str, logprob: Any) -> dict[str, Any]:
        return {"token": token, "logprob": float(logprob), "bytes": list(token.encode())}

    return [
        {
            **entry(token, logprob),
            "top_logprobs": [
                entry(t, lp) for t, lp in sorted(alts.items(), key=lambda kv: -kv[1])[:top]
            ],
        }
        for token, logprob, alts in zip(
            logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=False
        )
    ]


def delta_logprobs(entries: list[dict[str, Any]], wanted: bool) -> dict[str, Any] | None:
    return {"content": entries} if wanted else None


def choice_seed(seed: int | None, index: int) -> int | None:
    """Choice ``index``'s llama.cpp seed: a uint32 other than 0xFFFFFFFF (which llama.cpp
    reads as "random"); OpenAI's seeds are 64-bit."""
    return None if seed is None else (seed + index) % 0xFFFFFFFF
