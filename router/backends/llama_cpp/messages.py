"""OpenAI messages as the text turns any chat template renders, tools and tool calls
written in, as Hermes- and Qwen-style models are trained."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from router.backends.base import Message, text_content
from router.backends.llama_cpp.tools import TOOL_CLOSE, TOOL_OPEN


def _tools_prompt(tools: list[dict[str, Any]], *, parallel: bool) -> str:
    """The tools described to the model, as Hermes- and Qwen-style models are trained."""
    signatures = "\n".join(
        json.dumps({"type": "function", "function": t}, ensure_ascii=False) for t in tools
    )
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{signatures}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments "
        "within <tool_call></tool_call> XML tags:\n"
        f'{TOOL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n'
        f"{TOOL_CLOSE}" + ("" if parallel else "\nCall at most one function.")
    )


def _tool_call_text(call: Any) -> str:
    function = (call.get("function") if isinstance(call, dict) else None) or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):
            arguments = json.loads(arguments)
    body = json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_OPEN}\n{body}\n{TOOL_CLOSE}"


def template_messages(
    messages: list[Message],
    *,
    model: str,
    tools: list[dict[str, Any]],
    parallel: bool = True,
) -> list[Message]:
    """OpenAI messages as text turns any chat template renders: content parts joined
    (images refused), an assistant's tool calls written as ``<tool_call>`` blocks, tool
    results (one user turn for consecutive ones) as ``<tool_response>`` blocks, and the
    tools described in the system message."""
    out: list[Message] = []
    results = False  # the last turn holds tool results
    for i, m in enumerate(messages):
        role = m.get("role")
        content = text_content(m.get("content"), model=model, param=f"messages.{i}.content")
        if role in ("tool", "function"):
            block = f"<tool_response>\n{content}\n</tool_response>"
            if results:
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block})
            results = True
            continue
        results = False
        if role == "developer":
            role = "system"
        if role == "assistant" and m.get("tool_calls"):
            calls = "\n".join(_tool_call_text(c) for c in m["tool_calls"])
            content = f"{content}\n{calls}" if content else calls
        turn: Message = {"role": role, "content": content}
        if isinstance(m.get("name"), str):
            turn["name"] = m["name"]
        out.append(turn)
    if tools:
        described = _tools_prompt(tools, parallel=parallel)
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{described}"
        else:
            out.insert(0, {"role": "system", "content": described})
    return out


def plain_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return ""
