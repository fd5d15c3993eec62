"""Sub-commands of the ``hf-growth`` CLI, one module each (``add_parser`` + ``run``)."""


def parse_key_values(text: str, option: str = "--options") -> dict:
    """``'digits=5,n_layer=6,lr=1e-3,tie=false'`` -> ``{"digits": 5, "n_layer": 6, "lr": 0.001, "tie": False}``:
    ints, floats and true/false are cast, anything else stays a string. ``option`` names the flag in errors.

    >>> parse_key_values("digits=5, curriculum=false")
    {'digits': 5, 'curriculum': False}
    """
    out: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ValueError(f"{option} wants KEY=VALUE pairs, got {part!r}")
        key, value = (x.strip() for x in part.split("=", 1))
        if value.lower() in ("true", "false"):
            out[key] = value.lower() == "true"
            continue
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out
