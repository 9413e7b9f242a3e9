"""``answer_markdown``: tool calls and JSON answers shown readably, other text as it is."""

from __future__ import annotations

from ui.render import answer_markdown


def _call(name: str, arguments: str, call_id: str = "call_1") -> dict[str, object]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_a_tool_call_shows_its_name_and_pretty_arguments() -> None:
    shown = answer_markdown("", [_call("get_weather", '{"city":"Paris","days":[1,2]}')])
    assert shown == (
        "**Tool call** `get_weather`\n\n"
        '```json\n{\n  "city": "Paris",\n  "days": [\n    1,\n    2\n  ]\n}\n```'
    )


def test_text_then_each_tool_call_in_order() -> None:
    calls = [_call("first", "{}"), _call("second", '{"x": "é"}', "call_2")]
    shown = answer_markdown("Let me look that up.", calls)
    assert shown.startswith("Let me look that up.\n\n**Tool call** `first`")
    assert shown.index("`first`") < shown.index("`second`")
    assert '"x": "é"' in shown  # not \u escaped
    assert "call_1" not in shown  # ids say nothing to a person


def test_invalid_json_arguments_are_shown_as_they_are() -> None:
    shown = answer_markdown(None, [_call("search", '{"q": "unfinished')])
    assert shown == '**Tool call** `search`\n\n```\n{"q": "unfinished\n```'
    # Backticks inside cannot close the block early; a name cannot break its code span.
    fenced = answer_markdown("", [_call("a`b", "see ``` here")])
    assert fenced.startswith("**Tool call** `a'b`")
    assert "````\nsee ``` here\n````" in fenced


def test_a_tool_call_without_name_or_arguments_is_still_shown() -> None:
    assert answer_markdown("", [{"function": {"name": "", "arguments": ""}}]) == (
        "**Tool call** `tool`"
    )
    parsed = answer_markdown("", [{"function": {"name": "f", "arguments": {"a": 1}}}])
    assert '```json\n{\n  "a": 1\n}\n```' in parsed


def test_a_json_answer_is_pretty_printed() -> None:
    assert answer_markdown(' {"answer": 42, "ok": true}\n') == (
        '```json\n{\n  "answer": 42,\n  "ok": true\n}\n```'
    )
    assert answer_markdown("[1, 2]") == "```json\n[\n  1,\n  2\n]\n```"


def test_other_text_is_unchanged() -> None:
    for text in (
        "Hello **there**.",
        "{not json}",
        '"a JSON string"',
        "42",
        '```json\n{"a": 1}\n```',  # already a block: the model formatted it
        "",
    ):
        assert answer_markdown(text) == text
    assert answer_markdown(None) == ""
    assert answer_markdown("", []) == ""  # empty stays empty (the chatbot's typing dots)
