"""The ``template``, ``parameters`` and ``modelfile`` of ``/api/show``, made to tell clients the truth.

Clients decide things from these strings rather than from ``capabilities``: LiteLLM says a model calls tools
when ``"tools"`` is in its lower-cased template; Continue offers fill-in-the-middle only when the template has
``.Suffix`` and, like Ollama's VS Code extension, takes the context window from a ``num_ctx`` parameter;
Ollama itself calls a template with ``.Thinking`` in it a thinking one.  The backend applies the model's real
chat template, so the one shown here describes the model rather than drives it.

Policies:

* :func:`template_for` writes a Go template in Ollama's own language (``.System``, ``.Messages``,
  ``.Prompt``, ``.Response``) with Phi-3-style turn markers, plus a section per capability, present exactly
  when the model has it: ``.Tools``, ``.ToolCalls`` and tool-result turns for ``tools``; a ``.Suffix``
  fill-in-the-middle branch for ``insert``, with the family's own tokens (the prompt the daemon writes for
  vLLM and llama.cpp); ``.Thinking``, ``.IsThinkSet`` and ``.Think`` for ``thinking``.
  A model without one of them has none of its words, in any case (no ``tool``, ``suffix`` or ``think``
  anywhere), so that no client's substring test can see a capability that is not there.
* An embedding model's template is ``{{ .Prompt }}``, as Ollama's embedding models have.
* The backend's own chat template (llama.cpp's ``/props`` has it, in Jinja) is shown instead when the
  markers clients read say the same as the capabilities (:func:`template_markers`).  A Jinja template never
  has ``.Suffix`` or ``.Thinking``, so in practice that is a model with neither ``insert`` nor ``thinking``
  whose template mentions tools exactly when it can call them.
* :func:`parameters_for` prints Ollama's text: ``key`` padded to 30 columns, a space, the value as Go's
  ``%#v`` prints it (strings quoted with Go's escapes), one line per item of a list, keys sorted (Ollama's
  order is a Go map's, that is none).  ``num_ctx`` is the known context length and ``stop`` the stop
  sequences the backend reported; the config override's options win key by key.  Whole numbers print as
  integers: Ollama would print a ``num_ctx`` of 1048576 read back from JSON as ``1.048576e+06``, which
  clients parse as 1.  Values Ollama could not hold (tables, lists of lists, null) are left out, and so
  are keys with white space in them, which would break Continue's reading of every line.
* :func:`modelfile_for` writes what ``ollama show --modelfile`` would: ``FROM`` the backend id, then
  ``TEMPLATE`` and one ``PARAMETER`` line per value, quoted as Ollama's Modelfile writer quotes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from ollama_proxy.translate.families import QWEN_FIM, FillInTheMiddle

if TYPE_CHECKING:
    from ollama_proxy.translate.models import ModelInfo

#: What Ollama's embedding models carry as their template.
EMBEDDING_TEMPLATE: Final = "{{ .Prompt }}"
#: The column where Ollama starts a parameter's value (``%-30s`` then a space).
PARAMETER_KEY_WIDTH: Final = 30

# ---------------------------------------------------------------------------------------------------------
# Template
# ---------------------------------------------------------------------------------------------------------

_NOTE: Final = (
    "{{- /* ollama-proxy: the backend renders prompts with the model's own chat template;"
    " this one shows the parts of a request that reach it. */ -}}\n"
)
_SYSTEM_WITH_TOOLS: Final = """\
{{- if or .System .Tools }}<|system|>
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}
Functions you may call, each described in JSON; to call one, answer with
<tool_call>{"name": "<function name>", "arguments": <arguments object>}</tool_call>
{{- range .Tools }}
{{ .Function }}
{{- end }}
{{- end }}<|end|>
{{ end }}
"""
_SYSTEM: Final = """\
{{- if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}
"""
_TURNS_START: Final = """\
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|user|>
{{ .Content }}<|end|>
{{ else if eq .Role "assistant" }}<|assistant|>
"""
_ASSISTANT_THINKING: Final = """\
{{- if .Thinking }}
<think>{{ .Thinking }}</think>
{{- end }}
"""
_ASSISTANT_CONTENT: Final = """\
{{- if .Content }}
{{ .Content }}
{{- end }}
"""
_ASSISTANT_TOOL_CALLS: Final = """\
{{- range .ToolCalls }}
<tool_call>{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}</tool_call>
{{- end }}
"""
_ASSISTANT_END: Final = """\
{{- if not $last }}<|end|>
{{ end }}
"""
_TOOL_RESULT: Final = """\
{{- else if eq .Role "tool" }}<|tool_result|>
{{ .Content }}<|end|>
{{ end }}
"""
_ROLES_END: Final = """\
{{- end }}
"""
_ANSWER_START: Final = """\
{{- if and $last (ne .Role "assistant") }}<|assistant|>
"""
_THINKING_OFF: Final = """\
{{- if and $.IsThinkSet (not $.Think) }}
<think></think>
{{- end }}
"""
_TURNS_END: Final = """\
{{ end }}
{{- end }}
"""
_PROMPT_ONLY: Final = """\
{{- else }}
{{- if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}
{{- if .Prompt }}<|user|>
{{ .Prompt }}<|end|>
{{ end }}<|assistant|>
{{ .Response }}
{{- end }}"""


def _fill_in_the_middle(fim: FillInTheMiddle | None) -> str:
    """The ``.Suffix`` branch, with the model family's own tokens where they are known (Qwen's else)."""
    prompt = (fim or QWEN_FIM).prompt("{{ .Prompt }}", "{{ .Suffix }}")
    return f"{{{{- if .Suffix }}}}{prompt}\n{{{{- else if .Messages }}}}\n"


def generated_template(capabilities: Iterable[str], fim: FillInTheMiddle | None = None) -> str:
    """The template for a chat model with these capabilities (only tools, insert and thinking matter);
    ``fim`` is how the model is prompted to fill in the middle, where known."""
    has = frozenset(capabilities)
    tools, insert, thinking = "tools" in has, "insert" in has, "thinking" in has
    parts = [
        _NOTE,
        _fill_in_the_middle(fim) if insert else "{{- if .Messages }}\n",
        _SYSTEM_WITH_TOOLS if tools else _SYSTEM,
        _TURNS_START,
        _ASSISTANT_THINKING if thinking else "",
        _ASSISTANT_CONTENT,
        _ASSISTANT_TOOL_CALLS if tools else "",
        _ASSISTANT_END,
        _TOOL_RESULT if tools else _ROLES_END,
        _ANSWER_START,
        _THINKING_OFF if thinking else "",
        _TURNS_END,
        _PROMPT_ONLY,
    ]
    return "".join(parts)


def template_markers(template: str) -> frozenset[str]:
    """The capabilities clients read into a template: ``tools`` as LiteLLM tests it (``"tools"`` in the
    lower-cased text), ``insert`` as Continue does (``.Suffix``), ``thinking`` as Ollama does
    (``.Thinking``)."""
    found = set()
    if "tools" in template.lower():
        found.add("tools")
    if ".Suffix" in template:
        found.add("insert")
    if ".Thinking" in template:
        found.add("thinking")
    return frozenset(found)


def template_for(info: ModelInfo) -> str:
    """The ``template`` of ``/api/show``: the backend's own where it tells the truth, else a generated one."""
    if info.is_embedding:
        return EMBEDDING_TEMPLATE
    claimed = frozenset(info.capabilities) & {"tools", "insert", "thinking"}
    if info.chat_template and template_markers(info.chat_template) == claimed:
        return info.chat_template
    return generated_template(claimed, info.fim)


# ---------------------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------------------

_GO_ESCAPES: Final = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def go_quote(text: str) -> str:
    """``text`` as Go's ``strconv.Quote`` writes it, which is what Ollama's ``%#v`` shows for a string.

    Printable characters (Go's and Python's ideas of printable agree: letters, marks, numbers, punctuation,
    symbols and the ASCII space) stay as they are; the rest become ``\\xHH``, ``\\uHHHH`` or ``\\UHHHHHHHH``.
    """
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:  # a lone surrogate is not a rune; Go writes the replacement
            out.append("\\ufffd")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _go_float(value: float) -> str:
    """A float as Go's ``%v`` prints it: shortest digits, exponent form below 1e-4 and from 1e6 on."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer():
        return str(int(value))
    number = Decimal(repr(value))
    exponent = number.adjusted()
    if -4 <= exponent < 6:
        return format(number, "f")
    sign, digits, _ = number.normalize().as_tuple()
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def _scalar(value: Any, *, quoted: bool) -> str | None:
    """One value as ``%#v`` (quoted strings) or ``%v`` (bare strings) prints it; None if it is no scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return go_quote(value) if quoted else value
    return None


def _parameter_values(info: ModelInfo) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if info.context_length:
        values["num_ctx"] = info.context_length
    if info.stop:
        values["stop"] = list(info.stop)
    values.update(info.options)
    return values


def _items(values: Mapping[str, Any], *, quoted: bool) -> Iterator[tuple[str, str]]:
    for key in sorted(values):
        if not key or any(char.isspace() for char in key):
            # Continue reads each line with /^(\S+)\s+((?:".*")|\S+)$/ and gives up on the whole text
            # (fill-in-the-middle detection included) at the first line that does not match.
            continue
        value = values[key]
        for item in value if isinstance(value, (list, tuple)) else [value]:
            text = _scalar(item, quoted=quoted)
            if text is not None:
                yield key, text


def parameters_for(info: ModelInfo) -> str:
    """The ``parameters`` of ``/api/show``, in Ollama's text form."""
    values = _parameter_values(info)
    return "\n".join(f"{key:<{PARAMETER_KEY_WIDTH}} {text}" for key, text in _items(values, quoted=True))


# ---------------------------------------------------------------------------------------------------------
# Modelfile
# ---------------------------------------------------------------------------------------------------------


def modelfile_quote(text: str) -> str:
    """Ollama's Modelfile writer's quoting: only text with a line break or an outer space is quoted,
    in triple quotes when it holds a double quote."""
    if "\n" in text or text.startswith(" ") or text.endswith(" "):
        return f'"""{text}"""' if '"' in text else f'"{text}"'
    return text


def modelfile_for(info: ModelInfo, template: str) -> str:
    """The ``modelfile`` of ``/api/show``: the same template and parameters as the reply's own fields."""
    lines = [
        '# Modelfile generated by "ollama show"',
        f"# Served by ollama-proxy from the backend model {info.id}",
        "",
        f"FROM {info.id}",
        f"TEMPLATE {modelfile_quote(template)}",
    ]
    lines.extend(
        f"PARAMETER {key} {modelfile_quote(text)}"
        for key, text in _items(_parameter_values(info), quoted=False)
    )
    return "\n".join(lines) + "\n"
