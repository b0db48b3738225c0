"""The operator console: a web page served by the ground station side (docs/console.md).

    python -m ground_link.console RUN_DIR [--port N] [--host 127.0.0.1] [--partners FILE]

`data` (the archive as the console shows it, filtered per partner) imports no web framework;
`server` needs the `ground` extra (starlette, uvicorn).
"""
