"""Rewrite a marked block of a markdown file, so that README figures are regenerated from a run, never by hand."""


def replace_block(path: str, begin: str, end: str, block: str) -> None:
    """Replace the text of `path` from the marker `begin` to the marker `end` (both included) with `block`."""
    with open(path) as f:
        text = f.read()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no {begin} ... {end} block to rewrite.")
    head, rest = text.split(begin, 1)
    with open(path, "w") as f:
        f.write(head + block + rest.split(end, 1)[1])
