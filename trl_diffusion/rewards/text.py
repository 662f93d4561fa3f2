r"""
Turning a completion into text and reading the final answer in it (the `<answer>...</answer>` layout of d1).

The final answer ([`final_answer`]) is what a human grader reads as the model's answer:

1. the last non-empty box of the completion. A box is `\boxed{...}` or `\fbox{...}`, also written without its
   backslash (`boxed{4}`) or with a stray character after it (`\.boxed{18}`). It is closed by its matching brace; a box
   left open is closed by the end of its answer block, the next `</answer>` (`<answer>\n\boxed{20\n</answer>` reads
   `20`). A box left open with no `</answer>` after it (the completion was cut off inside it) is not an answer, and
   neither is an empty box or the prompt template's `\boxed{...}`;
2. else the content of the last non-empty `<answer>...</answer>` block, empty boxes removed
   (`<answer>\n\boxed{}101\n</answer>` reads `101`);
3. else nothing: the completion states no answer.

So an empty answer block followed by `\boxed{5}` reads `5`, and a `\boxed{118000}` written after an answer block
without a box wins over that block. The answer is returned as written: no number is picked out of it.
"""

import re


ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
ANSWER_PATTERN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# `\boxed{`, `boxed{`, `\.boxed{` (and `\fbox{`); not a longer word ending in "boxed" such as `unboxed{`.
BOX_PATTERN = re.compile(r"(?:\\\.?|(?<![A-Za-z\\]))(?:boxed|fbox)\s*\{")
# Box contents that state nothing: blank, or the dots of the prompt template's `\boxed{...}`.
_EMPTY_CONTENT = re.compile(r"\s*(?:\.\s*)*")


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


def is_empty_answer(content: str) -> bool:
    """Whether a box or block content states nothing (blank, or only dots like the template's `\\boxed{...}`)."""
    return _EMPTY_CONTENT.fullmatch(content) is not None


def _box_content(text: str, open_index: int, end: int) -> str | None:
    # Content after the brace at `open_index` up to its matching brace, searched before `end`; `None` if unclosed.
    depth = 0
    for index in range(open_index, end):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : index]
    return None


def find_boxes(text: str) -> list[str]:
    r"""
    Contents (stripped) of every readable box of `text`, in order of their opening: closed by their matching brace
    before the next `</answer>`, or else by that `</answer>` (the end of the answer block the box was written in).
    Empty boxes are included.
    """
    contents = []
    for match in BOX_PATTERN.finditer(text):
        open_index = match.end() - 1
        block_end = text.find(ANSWER_CLOSE, open_index)
        content = _box_content(text, open_index, len(text) if block_end < 0 else block_end)
        if content is None and block_end >= 0:
            content = text[open_index + 1 : block_end]  # closed by the end of the answer block
            if ANSWER_OPEN in content:  # the box was left open before a later answer block: not an answer
                content = None
        if content is not None:
            contents.append(content.strip())
    return contents


def extract_last_boxed(text: str) -> str | None:
    r"""The content of the last non-empty readable box of `text` (see [`find_boxes`]), or `None`."""
    boxes = [content for content in find_boxes(text) if not is_empty_answer(content)]
    return boxes[-1] if boxes else None


def _without_empty_boxes(content: str) -> str:
    for match in reversed(list(BOX_PATTERN.finditer(content))):
        inner = _box_content(content, match.end() - 1, len(content))
        if inner is not None and is_empty_answer(inner):
            content = content[: match.start()] + content[match.end() + len(inner) + 1 :]
    return content.strip()


def final_answer(text: str) -> str | None:
    r"""
    The final answer of a d1-style completion: the last non-empty box, else the last non-empty answer block with its
    empty boxes removed, else `None` (the rule and its accepted formats are in this module's docstring).
    """
    boxed = extract_last_boxed(text)
    if boxed is not None:
        return boxed
    for block in reversed(ANSWER_PATTERN.findall(text)):
        content = _without_empty_boxes(block)
        if not is_empty_answer(content):
            return content
    return None
