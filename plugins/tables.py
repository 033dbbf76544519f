"""The model zoos' generated tables (torchvision_table.py, timm_table.py): one module per library,
a line per model, written beside this file by ``python -m cvkit_plugins.<zoo>``."""

import os


def write_table(filename: str, *, library: str, version: str, what: str, table: dict) -> str:
    """Write ``table`` as ``TABLE`` (and ``version`` as the library's name in capitals) to
    ``filename`` beside this module, atomically; returns the path."""
    version = version.split("+")[0]
    rows = "".join(f"    {name!r}: {entry!r},\n" for name, entry in table.items())
    text = (f'"""{library} {version}\'s {what}, one per line: written by `python -m cvkit_plugins.'
            f'{library}_zoo`; do not edit."""\n\n{library.upper()} = {version!r}\n\nTABLE = {{\n{rows}}}\n')
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), filename)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return path
