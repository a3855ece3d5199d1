"""The engine fixture's layer: proves a layer's ContentUri is on sys.path like /opt/python."""


def greet(name: str) -> str:
    return f"greetings, {name}"
