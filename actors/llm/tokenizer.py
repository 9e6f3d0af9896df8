"""A tokenizer and chat template without transformers: the ``tokenizers`` library and jinja2.

:class:`ChatTokenizer` reads a model directory's ``tokenizer.json`` (``tokenizers.Tokenizer``),
its ``tokenizer_config.json`` (the special tokens) and its chat template (``chat_template.jinja``,
or the ``chat_template`` field of ``tokenizer_config.json``), and offers the part of transformers'
tokenizer interface that :mod:`actors.llm.generate` uses, with the same results for SmolLM2:

* ``tok(text)["input_ids"]``: ``Tokenizer.encode(text, add_special_tokens=True)``;
* ``apply_chat_template(messages, add_generation_prompt=True)``: the template rendered the way
  transformers renders it (a sandboxed jinja2 environment with ``trim_blocks``, ``lstrip_blocks``
  and loop controls, the ``tojson`` / ``raise_exception`` / ``strftime_now`` helpers, and the special
  tokens as variables), then encoded without adding special tokens (the template writes them);
* ``decode(ids, skip_special_tokens=True)``.

Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from cluster.exceptions import InputError

_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def compile_chat_template(template: str) -> Any:
    """``template`` compiled in an environment like transformers' (see the module docstring)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


class ChatTokenizer:
    """A model directory's tokenizer and chat template (see the module docstring)."""

    def __init__(self, tokenizer: Any, special: dict[str, str], chat_template: str | None) -> None:
        self._tok = tokenizer
        self.special_tokens_map = special
        self.chat_template = chat_template
        self._template = compile_chat_template(chat_template) if chat_template else None
        eos = special.get("eos_token")
        self.eos_token_id = tokenizer.token_to_id(eos) if eos else None

    @staticmethod
    def available(path: str | Path) -> bool:
        """True when ``path`` has what :meth:`from_dir` reads (a ``tokenizer.json``)."""
        return (Path(path) / "tokenizer.json").is_file()

    @classmethod
    def from_dir(cls, path: str | Path) -> "ChatTokenizer":
        """The tokenizer of the model directory ``path``; InputError when it has no tokenizer.json."""
        from tokenizers import Tokenizer

        path = Path(path)
        if not cls.available(path):
            raise InputError(f"model: {str(path)!r} has no tokenizer.json; use engine 'transformers'")
        config: dict[str, Any] = {}
        if (path / "tokenizer_config.json").is_file():
            config = json.loads((path / "tokenizer_config.json").read_text())
        special = {k: t for k in _SPECIAL if (t := _token_text(config.get(k))) is not None}
        template = config.get("chat_template")
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        if not isinstance(template, str):  # absent, or a list of named templates (not used here)
            template = None
        return cls(Tokenizer.from_file(str(path / "tokenizer.json")), special, template)

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": list(self._tok.encode(text, add_special_tokens=True).ids)}

    def render_chat(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The chat template's text for ``messages`` (InputError when the model has none)."""
        if self._template is None:
            raise InputError("chat: this model has no chat template; send chat=false")
        return self._template.render(messages=messages, tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt, **self.special_tokens_map)

    def apply_chat_template(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = False,
                            tokenize: bool = True, return_dict: bool = False) -> Any:
        """As transformers' method of that name, for one conversation."""
        text = self.render_chat(messages, add_generation_prompt=add_generation_prompt)
        if not tokenize:
            return text
        ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        return {"input_ids": ids} if return_dict else ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of the model directory ``path``: a :class:`ChatTokenizer` when it has a
    ``tokenizer.json`` (no transformers import), else transformers' ``AutoTokenizer``."""
    if ChatTokenizer.available(path):
        return ChatTokenizer.from_dir(path)
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


__all__ = ["ChatTokenizer", "compile_chat_template", "load_tokenizer"]
