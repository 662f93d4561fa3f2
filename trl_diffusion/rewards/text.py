"""Turning a completion into text and finding the answer in it (the `<answer>...</answer>` layout of d1)."""

import re


ANSWER_PATTERN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def completion_text(completion) -> str:
    """
    Return the text of one completion as TRL passes it to reward functions.

    A standard completion is a string; a conversational completion is a list of messages whose contents are joined
    (TRL's generated conversational completion is one assistant message). Anything else gives an empty string, which
    every reward scores 0.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):  # a single message
        content = completion.get("content")
        return content if isinstance(content, str) else ""
    if isinstance(completion, (list, tuple)):
        parts = []
        for message in completion:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                parts.append(content)
        return "".join(parts)
    return ""


def extract_answer_block(text: str) -> str | None:
    """Return the stripped content of the last complete `<answer>...</answer>` block, or `None` if there is none."""
    matches = ANSWER_PATTERN.findall(text)
    return matches[-1].strip() if matches else None


def extract_last_boxed(text: str) -> str | None:
    r"""
    Return the content of the last `\boxed{...}` (or `\fbox{...}`) in `text` with balanced braces, or `None`.

    An unbalanced last box (the completion was cut off inside it) gives `None`.
    """
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    open_index = text.index("{", start)
    depth = 0
    for index in range(open_index, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : index].strip()
    return None


def final_answer(text: str) -> str | None:
    r"""
    The final answer of a d1-style completion: the last `\boxed{}` inside the last `<answer>` block, else that block's
    content, else the last `\boxed{}` anywhere (d1's evaluation prompts ask for `<answer>\boxed{...}</answer>`; its
    training prompts for a bare answer in the tags). `None` when the completion states no answer.
    """
    block = extract_answer_block(text)
    if block is not None:
        boxed = extract_last_boxed(block)
        return boxed if boxed is not None else block
    return extract_last_boxed(text)
