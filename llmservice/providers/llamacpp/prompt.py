"""Turn a conversation into prompt segments with a Jinja chat template.

A chat model is prompted with its GGUF's own template (`tokenizer.chat_template`) or one
the operator names (`llamacpp.chat_template`: a built-in name or a Jinja file). A GGUF
with neither gets no borrowed format: it only completes text.

Message text never becomes control tokens. The template is rendered once with a marker
in place of each message's text, and the markers cut the result into the template's own
text (parsed for special tokens) and message text (tokenized as plain text), so a user
who writes `<|im_end|>` gets those characters, not the end of a turn. A second render
with the real text checks that the pieces put together give exactly what the template
writes, allowing for templates that trim message text.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmservice.kernel.types import Message


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    # Control text (turn markers): parsed for special tokens. Message text is not.
    special: bool = False


# Built-in templates, for GGUFs that carry none, written as their families' own templates are.
BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # Gemma: no system role (its text opens the first user turn), assistant turns as `model`.
    "gemma": (
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}"
        "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
        "{% set loop_messages = messages[1:] %}"
        "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
        "{% for message in loop_messages %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '')"
        " + message['content'] | trim + '<end_of_turn>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        " + message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
}


def template_source(name_or_file: str) -> str:
    """A built-in template by name, or a Jinja file's text; ValueError naming what is wrong."""
    if name_or_file in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[name_or_file]
    path = Path(name_or_file).expanduser()
    if not path.is_file():
        raise ValueError(
            f"{name_or_file!r} is neither a built-in chat template ({', '.join(BUILTIN_TEMPLATES)}) "
            "nor a Jinja file"
        )
    return path.read_text()


class TemplatePrompt:
    """A Jinja chat template, rendered in a sandbox, message text kept apart from its control text."""

    def __init__(self, template: str, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        try:
            self._template = env.from_string(template)
        except TemplateError as exc:
            raise ValueError(f"the chat template does not parse: {exc}") from None
        self._bos, self._eos = bos_token, eos_token

    def __call__(self, messages: tuple[Message, ...], *, generation_prompt: bool = True) -> list[Segment]:
        """The prompt for the model's next turn; without `generation_prompt`, the conversation only."""
        nonce = secrets.token_hex(8)  # unguessable, so message text cannot forge a marker
        marks = [f"\ue000{nonce}:{i}\ue001" if m.content else "" for i, m in enumerate(messages)]
        contents = [m.content for m in messages]
        marked = self._render(messages, marks, generation_prompt)
        real = self._render(messages, contents, generation_prompt)
        pieces = re.split(f"\ue000{nonce}:(\\d+)\ue001", marked)
        return _splice(pieces, contents, real)

    def _render(self, messages: tuple[Message, ...], contents: list[str], generation_prompt: bool) -> str:
        try:
            return self._template.render(
                messages=[{"role": m.role, "content": c} for m, c in zip(messages, contents, strict=True)],
                bos_token=self._bos,
                eos_token=self._eos,
                add_generation_prompt=generation_prompt,
                raise_exception=_raise,
            )
        except TemplateError as exc:
            raise ValueError(f"the model's chat template failed on this conversation: {exc}") from None


def _splice(pieces: list[str], contents: list[str], real: str) -> list[Segment]:
    """Template text and message text in order, checked against the template's real output.

    `pieces` alternates template text and message indexes (re.split with a group). A
    message's text stands as it is or trimmed, whichever the real output shows.
    """
    if not real.startswith(pieces[0]):
        raise _rewritten()
    segments = [Segment(pieces[0], True)]
    pos = len(pieces[0])
    for index, after in zip(pieces[1::2], pieces[2::2], strict=True):
        content = contents[int(index)]
        text = next((t for t in (content, content.strip()) if real.startswith(t + after, pos)), None)
        if text is None:
            raise _rewritten()
        segments += [Segment(text), Segment(after, True)]
        pos += len(text) + len(after)
    if pos != len(real):
        raise _rewritten()
    return [s for s in segments if s.text]


def _rewritten() -> ValueError:
    return ValueError(
        "the model's chat template rewrites message text in a way that cannot be kept apart "
        "from its control tokens; name another one with llamacpp.chat_template"
    )


def _raise(message: str) -> None:
    raise ValueError(message)
