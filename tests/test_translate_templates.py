"""``/api/show``'s template, parameters and modelfile, checked the way the clients that read them do."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from ollama._types import ShowResponse

from ollama_proxy.translate.models import ModelInfo, ModelOverride, model_info, show_reply
from ollama_proxy.translate.templates import (
    EMBEDDING_TEMPLATE,
    generated_template,
    go_quote,
    modelfile_for,
    modelfile_quote,
    parameters_for,
    template_for,
    template_markers,
)

# --- the clients' own rules, restated -----------------------------------------------------------------------


def litellm_supports_function_calling(show: dict[str, object]) -> bool:
    """LiteLLM's test (litellm/llms/ollama/common_utils.py, ``OllamaModelInfo._supports_function_calling``,
    and llms/ollama/completion/transformation.py, ``OllamaConfig._supports_function_calling``, 1.x):
    ``"tools" in str(template or "").lower()``."""
    return "tools" in str(show.get("template", "") or "").lower()


def continue_supports_fim(show: dict[str, object]) -> bool:
    """Continue's test (core/llm/llms/Ollama.ts): ``!!body?.template?.includes(".Suffix")``."""
    template = show.get("template")
    return isinstance(template, str) and ".Suffix" in template


CONTINUE_LINE = re.compile(r'^(\S+)\s+((?:".*")|\S+)$')


def continue_parameters(text: str) -> tuple[int | None, list[str]]:
    """Continue's reading of ``parameters`` (core/llm/llms/Ollama.ts): each line must match its regex (a
    line that does not throws, and the rest of /api/show is lost), ``num_ctx`` by parseInt, ``stop`` by
    JSON.parse."""
    context = None
    stops = []
    for line in text.split("\n"):
        match = CONTINUE_LINE.match(line)
        assert match is not None, line
        key, value = match.groups()
        if key == "num_ctx":
            context = int(re.match(r"-?\d+", value).group(0))  # type: ignore[union-attr]
        elif key == "stop":
            stops.append(json.loads(value))
    return context, stops


def info(
    *capabilities: str,
    context_length: int | None = None,
    stop: tuple[str, ...] = (),
    options: dict[str, Any] | None = None,
    chat_template: str | None = None,
) -> ModelInfo:
    return ModelInfo(
        id="org/model",
        created=None,
        capabilities=("completion", *capabilities),
        family="x",
        context_length=context_length,
        stop=stop,
        options=options or {},
        chat_template=chat_template,
    )


# --- templates ----------------------------------------------------------------------------------------------

COMBINATIONS = [
    frozenset(c for c, on in zip(("tools", "insert", "thinking"), bits, strict=True) if on)
    for bits in itertools.product((False, True), repeat=3)
]


@pytest.mark.parametrize("capabilities", COMBINATIONS, ids=lambda c: "+".join(sorted(c)) or "plain")
def test_the_template_has_each_section_exactly_when_the_model_has_the_capability(
    capabilities: frozenset[str],
) -> None:
    template = template_for(info(*sorted(capabilities)))
    lowered = template.lower()
    tools, insert, thinking = (c in capabilities for c in ("tools", "insert", "thinking"))

    assert litellm_supports_function_calling({"template": template}) is tools
    assert ("{{- if .Tools }}" in template and "{{- range .ToolCalls }}" in template) is tools
    assert ('eq .Role "tool"' in template) is tools
    assert ("tool" in lowered) is tools

    assert continue_supports_fim({"template": template}) is insert
    assert ("{{ .Suffix }}" in template) is insert
    assert ("suffix" in lowered) is insert

    assert all(marker in template for marker in ("{{ .Thinking }}", "$.IsThinkSet", "$.Think")) is thinking
    assert ("think" in lowered) is thinking

    # What every chat template has, in Ollama's own idiom.
    for common in (
        "{{- if .System }}",
        "{{- range $i, $_ := .Messages }}",
        "{{ .Prompt }}",
        "{{ .Response }}",
    ):
        assert common in template
    assert template_markers(template) == capabilities


@pytest.mark.parametrize(
    ("model_id", "branch"),
    [
        ("Qwen/Qwen2.5-Coder-7B", "<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>"),
        ("bigcode/starcoder2-15b", "<fim_prefix>{{ .Prompt }}<fim_suffix>{{ .Suffix }}<fim_middle>"),
        ("codellama/CodeLlama-7b-hf", "<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>"),
        ("mistralai/Codestral-22B-v0.1", "[SUFFIX]{{ .Suffix }}[PREFIX]{{ .Prompt }}"),
    ],
)
def test_a_code_models_template_shows_the_prompt_it_is_really_sent(model_id: str, branch: str) -> None:
    found = model_info({"id": model_id})
    assert found is not None
    assert "{{- if .Suffix }}" + branch + "\n" in template_for(found)


BLOCK = re.compile(r"{{-?\s*(if|range|with|else|end)\b")


@pytest.mark.parametrize("capabilities", COMBINATIONS, ids=lambda c: "+".join(sorted(c)) or "plain")
def test_the_template_is_well_formed(capabilities: frozenset[str]) -> None:
    """Every ``if``/``range`` has its ``end``, and ``else`` is only inside an ``if``, as Go's parser wants."""
    stack: list[str] = []
    for keyword in BLOCK.findall(generated_template(capabilities)):
        if keyword in ("if", "range", "with"):
            stack.append(keyword)
        elif keyword == "else":
            assert stack[-1:] == ["if"]
        else:
            assert stack
            stack.pop()
    assert stack == []


def test_an_embedding_model_has_a_bare_prompt_template() -> None:
    embedder = ModelInfo(id="bge", created=None, capabilities=("embedding",), family="bert")
    assert template_for(embedder) == EMBEDDING_TEMPLATE == "{{ .Prompt }}"
    # Even with a backend chat template at hand.
    with_template = ModelInfo(
        id="bge", created=None, capabilities=("embedding",), family="bert", chat_template="{{ messages }}"
    )
    assert template_for(with_template) == "{{ .Prompt }}"


JINJA_WITH_TOOLS = "{%- if tools %}<|im_start|>system\n{{ tools | tojson }}<|im_end|>{%- endif %}"
JINJA_PLAIN = "{%- for message in messages %}<|im_start|>{{ message.role }}{%- endfor %}"


@pytest.mark.parametrize(
    ("capabilities", "backend", "shown"),
    [
        # The markers hold: the backend's own template is the better description.
        (("tools",), JINJA_WITH_TOOLS, JINJA_WITH_TOOLS),
        ((), JINJA_PLAIN, JINJA_PLAIN),
        # A model without tools whose template mentions them would read as a tool model in LiteLLM.
        ((), JINJA_WITH_TOOLS, None),
        # A tool model whose template never mentions them would read as tool-less.
        (("tools",), JINJA_PLAIN, None),
        # Jinja has no .Thinking or .Suffix, so a thinking or fill-in-the-middle model gets the generated one.
        (("tools", "thinking"), JINJA_WITH_TOOLS, None),
        (("insert",), JINJA_PLAIN, None),
    ],
)
def test_the_backend_template_is_shown_only_where_it_tells_the_truth(
    capabilities: tuple[str, ...], backend: str, shown: str | None
) -> None:
    model = info(*capabilities, chat_template=backend)
    assert template_for(model) == (shown if shown is not None else generated_template(capabilities))


# --- parameters ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "text"),
    [
        (info(), ""),
        (info(context_length=32768), "num_ctx                        32768"),
        (
            info(context_length=40960, stop=("<|im_start|>", "<|im_end|>")),
            'num_ctx                        40960\nstop                           "<|im_start|>"\n'
            'stop                           "<|im_end|>"',
        ),
        (
            info(
                context_length=8192,
                stop=("</s>",),
                options={"temperature": 0.6, "top_k": 20, "stop": ["[INST]", "[/INST]"], "num_ctx": 4096},
            ),
            # The override's options win key by key; keys come sorted.
            'num_ctx                        4096\nstop                           "[INST]"\n'
            'stop                           "[/INST]"\ntemperature                    0.6\n'
            "top_k                          20",
        ),
        (
            info(options={"repeat_penalty": 1.0, "use_mmap": False, "min_p": 1e-05, "seed": 1048576.0}),
            # Whole floats print as integers, small ones in Go's exponent form.
            "min_p                          1e-05\nrepeat_penalty                 1\n"
            "seed                           1048576\nuse_mmap                       false",
        ),
        (
            info(options={"stop": 'say "bye"\n\\', "bad key": 1, "nested": {"a": 1}, "none": None}),
            # Quoted as Go's %#v; what Ollama could not hold, and keys that would break Continue, are dropped.
            'stop                           "say \\"bye\\"\\n\\\\"',
        ),
        (
            info(options={"a_very_long_option_name_past_30_columns": 1}),
            "a_very_long_option_name_past_30_columns 1",
        ),
    ],
)
def test_parameters_in_ollamas_text_form(model: ModelInfo, text: str) -> None:
    assert parameters_for(model) == text


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("<|im_end|>", '"<|im_end|>"'),
        ("tab\there", '"tab\\there"'),
        ("\x01\x7f", '"\\x01\\x7f"'),
        ("\u00a0\u200b", '"\\u00a0\\u200b"'),  # not printable to Go: a no-break space and a format character
        ("\U000e0001", '"\\U000e0001"'),
        ("é中😀", '"é中😀"'),
        ("\ud800", '"\\ufffd"'),
    ],
)
def test_strings_are_quoted_as_go_quotes_them(value: str, quoted: str) -> None:
    # The expected strings are what Go 1.19's fmt.Sprintf("%#v", value) printed for each value.
    assert go_quote(value) == quoted


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        (0.7, "0.7"),
        (123456.7, "123456.7"),
        (1234567.8, "1.2345678e+06"),
        (-0.0001, "-0.0001"),
        (2.5e-7, "2.5e-07"),
    ],
)
def test_floats_print_as_go_prints_them(value: float, printed: str) -> None:
    assert parameters_for(info(options={"x": value})) == f"x{' ' * 30}{printed}"


def test_continue_reads_the_context_and_stops_back() -> None:
    model = info(context_length=131072, stop=("<|eot_id|>", 'a "quoted" stop'), options={"temperature": 0.5})
    assert continue_parameters(parameters_for(model)) == (131072, ["<|eot_id|>", 'a "quoted" stop'])


# --- modelfile and show -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "quoted"),
    [("plain", "plain"), ("two\nlines", '"two\nlines"'), (' say "x"', '""" say "x""""'), ("a b", "a b")],
)
def test_modelfile_quoting(text: str, quoted: str) -> None:
    assert modelfile_quote(text) == quoted


def test_modelfile_for_an_embedder() -> None:
    embedder = ModelInfo(
        id="BAAI/bge-m3", created=None, capabilities=("embedding",), family="bert", context_length=8192
    )
    assert modelfile_for(embedder, template_for(embedder)) == (
        '# Modelfile generated by "ollama show"\n'
        "# Served by ollama-proxy from the backend model BAAI/bge-m3\n"
        "\n"
        "FROM BAAI/bge-m3\n"
        "TEMPLATE {{ .Prompt }}\n"
        "PARAMETER num_ctx 8192\n"
    )


def test_show_fills_template_parameters_and_modelfile_consistently() -> None:
    model = model_info(
        {"id": "Qwen/Qwen3-8B", "max_model_len": 40960},
        ModelOverride(options={"stop": ["<|im_end|>"], "temperature": 0.6}),
    )
    assert model is not None
    reply = show_reply(model, "")
    assert reply["template"] == template_for(model)
    assert reply["parameters"] == parameters_for(model)
    assert litellm_supports_function_calling(reply)
    assert not continue_supports_fim(reply)
    assert continue_parameters(reply["parameters"]) == (40960, ["<|im_end|>"])
    modelfile = reply["modelfile"]
    assert modelfile.startswith('# Modelfile generated by "ollama show"\n')
    assert "\nFROM Qwen/Qwen3-8B\n" in modelfile
    # The template has double quotes and several lines: Ollama's writer puts it in triple quotes.
    assert f'\nTEMPLATE """{reply["template"]}"""\n' in modelfile
    assert modelfile.endswith(
        "\nPARAMETER num_ctx 40960\nPARAMETER stop <|im_end|>\nPARAMETER temperature 0.6\n"
    )
    shown = ShowResponse.model_validate(reply)
    assert shown.template == reply["template"]
    assert shown.parameters == reply["parameters"]
    assert shown.capabilities == ["completion", "tools", "thinking"]


@pytest.mark.parametrize(
    ("entry", "tools", "fim"),
    [
        ({"id": "Qwen/Qwen2.5-Coder-7B-Instruct"}, True, True),
        ({"id": "bigcode/starcoder2-15b"}, False, True),
        ({"id": "llava-hf/llava-1.5-7b-hf"}, False, False),
        ({"id": "gpt-4o-mini"}, True, False),
        ({"id": "text-embedding-3-small"}, False, False),
    ],
)
def test_what_litellm_and_continue_conclude_from_show(
    entry: dict[str, object], tools: bool, fim: bool
) -> None:
    model = model_info(entry)
    assert model is not None
    reply = show_reply(model, "")
    assert litellm_supports_function_calling(reply) is tools
    assert continue_supports_fim(reply) is fim
