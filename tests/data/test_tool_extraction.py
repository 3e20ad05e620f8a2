"""Tool calls read back out of an answer in each LLaMA-Factory tool format: what the format writes
for one call and for parallel calls is read back as the same calls; plain text is no call."""

import pytest

from ulysses_pro.data.lf_template.tools import TOOL_STYLES, extract_calls

ONE = [("get_weather", '{"city": "Paris", "unit": "c"}')]
TWO = [*ONE, ("get_time", '{"zone": "CET"}')]


@pytest.mark.parametrize("style", sorted(TOOL_STYLES))
def test_what_a_format_writes_it_reads_back(style):
    assert extract_calls(style, TOOL_STYLES[style].calls(ONE)) == ONE
    if style != "glm4":  # GLM-4's format has no parallel calls
        assert extract_calls(style, TOOL_STYLES[style].calls(TWO)) == TWO


@pytest.mark.parametrize("style", sorted(TOOL_STYLES))
def test_plain_text_is_no_call(style):
    assert extract_calls(style, "The weather in Paris is mild today.") is None
    assert extract_calls(style, '{"no": "name"}') is None


def test_qwen3_5_writes_xml_calls_with_bare_strings_and_json_values():
    """LLaMA-Factory's `Qwen35ToolUtils`: one <parameter=...> block per argument; strings as they
    are, other values as JSON; read back with their JSON types."""
    calls = [("get_weather", '{"city": "Paris", "days": 3, "hourly": false}')]
    text = TOOL_STYLES["qwen3_5"].calls(calls)
    assert text == (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n<parameter=hourly>\nfalse\n</parameter>\n</function>\n</tool_call>"
    )
    assert extract_calls("qwen3_5", "Let me look.\n" + text) == calls
