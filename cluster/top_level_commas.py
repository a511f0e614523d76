"""Splitting a list at its top-level commas: the commas outside brackets and quotes.

SLURM writes node lists as `node[1-3,7],gpu2` and a sweep's grid lists values as `a,[1, 2],"x,y"`;
both are lists whose items may hold commas of their own.
"""


def split_top_level_commas(text: str) -> list[str]:
    """Split at commas outside brackets and quotes, each part stripped: 'a,[1, 2],"x,y"' -> ['a', '[1, 2]', '"x,y"'].

    Empty parts are kept (',a' -> ['', 'a']): the caller decides whether an empty item is an error.
    """
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part.strip() for part in parts]
