"""Turn a conversation into prompt text segments for a GGUF model.

A GGUF that carries a chat template (`tokenizer.chat_template`) is rendered with
it. One that has none (the bundled Gemma 3 270M) gets Gemma's turn format: system
text folded into the first user turn, assistant turns as `model`, and an open
model turn at the end. User text is kept apart from the template's control text so
it is never parsed for special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmservice.types import Message


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    # Control text (turn markers): parsed for special tokens. Message text is not.
    special: bool = False


START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"


def gemma_prompt(messages: tuple[Message, ...]) -> list[Segment]:
    """Gemma's turn format, with every system message folded into the first user turn."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    turns = [m for m in messages if m.role != "system"]
    if not turns or turns[0].role != "user":
        turns.insert(0, Message("user", ""))
    if system:
        first = turns[0]
        turns[0] = Message("user", f"{system}\n\n{first.content}" if first.content else system)
    segments: list[Segment] = []
    for turn in turns:
        role = "model" if turn.role == "assistant" else "user"
        segments += [
            Segment(START_OF_TURN, True),
            Segment(f"{role}\n"),
            Segment(turn.content),
            Segment(END_OF_TURN, True),
            Segment("\n"),
        ]
    segments += [Segment(START_OF_TURN, True), Segment("model\n")]
    return segments


class TemplatePrompt:
    """A GGUF's own Jinja chat template, rendered in a sandbox."""

    def __init__(self, template: str, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = env.from_string(template)
        self._bos, self._eos = bos_token, eos_token

    def __call__(self, messages: tuple[Message, ...]) -> list[Segment]:
        text = self._template.render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            bos_token=self._bos,
            eos_token=self._eos,
            add_generation_prompt=True,
            raise_exception=_raise,
        )
        return [Segment(text, True)]


def _raise(message: str) -> None:
    raise ValueError(message)
