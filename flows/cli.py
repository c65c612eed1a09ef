"""The `genair` command (placeholder entry point until the flow lands)."""


def main() -> int:
    raise SystemExit("genair: not wired yet")
